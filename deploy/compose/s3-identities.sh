#!/bin/sh
# One-shot (compose service `s3-identities`): writes the SeaweedFS S3 identities file.
#
#   admin          S3_ADMIN_ACCESS_KEY / S3_ADMIN_SECRET_KEY: every action. For operators
#                  (backups, inspection); no DermaSentinel container is given these keys.
#   dermasentinel  S3_ACCESS_KEY / S3_SECRET_KEY: read, write, list and tag objects, only in
#                  buckets named "$S3_BUCKET_PREFIX-*". It cannot create, delete or list other
#                  buckets (s3-buckets.sh creates ours).
#
# The S3 gateway starts with this file, so it never runs without authentication.
# Usage: s3-identities.sh OUTPUT_FILE
set -eu

out="${1:?usage: s3-identities.sh OUTPUT_FILE}"
prefix="${S3_BUCKET_PREFIX:-dermasentinel}"

for name in S3_ADMIN_ACCESS_KEY S3_ADMIN_SECRET_KEY S3_ACCESS_KEY S3_SECRET_KEY; do
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
        echo "s3-identities: $name is not set" >&2
        exit 1
    fi
    # The values go into JSON as they are: keep them to characters that need no escaping.
    case "$value" in
        *[!A-Za-z0-9._~+/=-]*)
            echo "s3-identities: $name may use only letters, digits and . _ ~ + / = -" >&2
            exit 1
            ;;
    esac
done
case "$prefix" in
    *[!a-z0-9.-]* | "")
        echo "s3-identities: S3_BUCKET_PREFIX must be a valid bucket name prefix (a-z 0-9 . -)" >&2
        exit 1
        ;;
esac
if [ "$S3_ACCESS_KEY" = "$S3_ADMIN_ACCESS_KEY" ]; then
    echo "s3-identities: the app key (S3_ACCESS_KEY) must differ from S3_ADMIN_ACCESS_KEY" >&2
    exit 1
fi

umask 077
tmp="$out.tmp"
cat > "$tmp" <<JSON
{
  "identities": [
    {
      "name": "admin",
      "credentials": [{"accessKey": "$S3_ADMIN_ACCESS_KEY", "secretKey": "$S3_ADMIN_SECRET_KEY"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    },
    {
      "name": "dermasentinel",
      "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
      "actions": ["Read:$prefix-*", "Write:$prefix-*", "List:$prefix-*", "Tagging:$prefix-*"]
    }
  ]
}
JSON
mv "$tmp" "$out"
echo "s3-identities: wrote admin and dermasentinel (buckets $prefix-*) to $out"
