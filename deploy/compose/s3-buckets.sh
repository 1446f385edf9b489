#!/bin/sh
# One-shot (compose service `s3-buckets`): creates DermaSentinel's buckets through the
# SeaweedFS master (`weed shell`), so the app's S3 key needs no right to create buckets.
# BUCKET_PURPOSES must match shared/storage.py PURPOSES (tests/test_compose.py checks it).
#
# Usage: s3-buckets.sh MASTER_HOST:PORT   (WEED: the weed binary, default `weed`)
set -eu

BUCKET_PURPOSES="images artifacts"

master="${1:?usage: s3-buckets.sh MASTER_HOST:PORT}"
prefix="${S3_BUCKET_PREFIX:-dermasentinel}"
weed="${WEED:-weed}"

existing="$(echo "s3.bucket.list" | "$weed" shell -master="$master")"
for purpose in $BUCKET_PURPOSES; do
    bucket="$prefix-$purpose"
    if printf '%s\n' "$existing" | grep -Eq "^[[:space:]]*$bucket([[:space:]]|\$)"; then
        echo "s3-buckets: $bucket exists"
        continue
    fi
    output="$(echo "s3.bucket.create -name $bucket" | "$weed" shell -master="$master" 2>&1)"
    if ! printf '%s\n' "$output" | grep -q "created bucket $bucket"; then
        printf 's3-buckets: could not create %s:\n%s\n' "$bucket" "$output" >&2
        exit 1
    fi
    echo "s3-buckets: created $bucket"
done
