"""Object storage through the minio client. Keys are always tenant-scoped."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO, cast

import urllib3
from minio import Minio
from minio.error import S3Error

from shared.config import SettingMissing, Settings

IMAGES = "images"
ARTIFACTS = "artifacts"
PURPOSES = (IMAGES, ARTIFACTS)


def image_key(tenant_id: uuid.UUID, analysis_id: uuid.UUID, extension: str) -> str:
    return f"tenants/{tenant_id}/analyses/{analysis_id}/image.{extension}"


def upload_key(tenant_id: uuid.UUID, upload_id: uuid.UUID) -> str:
    return f"tenants/{tenant_id}/uploads/{upload_id}"


def archive_key(tenant_id: uuid.UUID, batch_id: uuid.UUID, archive_id: uuid.UUID) -> str:
    """A batch's archive as PUT (images bucket: raw images, deleted once unpacked)."""
    return f"tenants/{tenant_id}/batches/{batch_id}/archive/{archive_id}"


# A batch's output and errors files (issue 25).
BATCH_OUTPUT, BATCH_ERRORS = "output.ndjson", "errors.ndjson"
BATCH_FILES = (BATCH_OUTPUT, BATCH_ERRORS)


def batch_file_key(tenant_id: uuid.UUID, batch_id: uuid.UUID, name: str) -> str:
    """A batch's output or errors file (artifacts bucket)."""
    return f"tenants/{tenant_id}/batches/{batch_id}/{name}"


def artifact_key(tenant_id: uuid.UUID, analysis_id: uuid.UUID, name: str) -> str:
    return f"tenants/{tenant_id}/analyses/{analysis_id}/{name}"


def tenant_prefix(tenant_id: uuid.UUID) -> str:
    """Every object a tenant owns lies under this prefix, in both buckets."""
    return f"tenants/{tenant_id}/"


def analysis_prefix(tenant_id: uuid.UUID, analysis_id: uuid.UUID) -> str:
    """Every object an analysis owns (image, mask, overlay, report) lies under this prefix."""
    return f"tenants/{tenant_id}/analyses/{analysis_id}/"


@dataclass
class ObjectStore:
    client: Minio
    settings: Settings
    link_client: Minio | None = None

    def bucket(self, purpose: str) -> str:
        return self.settings.bucket(purpose)

    def ensure_buckets(self) -> None:
        for purpose in PURPOSES:
            name = self.bucket(purpose)
            if not self.client.bucket_exists(name):
                try:
                    self.client.make_bucket(name)
                except S3Error as exc:
                    # Another process created it between our check and our create.
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

    def put(self, purpose: str, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(
            self.bucket(purpose), key, io.BytesIO(data), length=len(data), content_type=content_type
        )

    def put_stream(
        self, purpose: str, key: str, data: BinaryIO, length: int, content_type: str,
        metadata: dict[str, str] | None = None,
    ) -> None:
        """An object from a file (a generated batch file, issue 25), with user metadata."""
        self.client.put_object(
            self.bucket(purpose), key, data, length=length, content_type=content_type,
            metadata=cast(Any, metadata),
        )

    def user_metadata(self, purpose: str, key: str) -> dict[str, str] | None:
        """The object's user metadata (lower-case names, no ``x-amz-meta-``); None when there is no object."""
        try:
            stat = self.client.stat_object(self.bucket(purpose), key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return None
            raise
        prefix = "x-amz-meta-"
        return {name.lower()[len(prefix):]: value for name, value in (stat.metadata or {}).items()
                if name.lower().startswith(prefix)}

    def get(self, purpose: str, key: str) -> bytes:
        response = self.client.get_object(self.bucket(purpose), key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def stream(self, purpose: str, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """The object's bytes in chunks, never whole in memory (exports)."""
        response = self.client.get_object(self.bucket(purpose), key)
        try:
            yield from response.stream(chunk_size)
        finally:
            response.close()
            response.release_conn()

    def delete(self, purpose: str, key: str) -> None:
        self.client.remove_object(self.bucket(purpose), key)

    def keys_under(self, purpose: str, prefix: str) -> Iterator[str]:
        """The keys of every object under ``prefix``."""
        for item in self.client.list_objects(self.bucket(purpose), prefix=prefix, recursive=True):
            if item.object_name is not None:
                yield item.object_name

    def exists(self, purpose: str, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket(purpose), key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise
        return True

    def presigned_get(self, purpose: str, key: str) -> str:
        return (self.link_client or self.client).presigned_get_object(
            self.bucket(purpose), key, expires=timedelta(seconds=self.settings.presign_ttl_seconds)
        )

    def presigned_put(self, purpose: str, key: str, expires_seconds: int) -> str:
        """A URL that lets its holder PUT one object at ``key`` until it expires. Only the
        host is signed (minio's presigner), so size and type are checked when the object
        is ingested, not by the store (docs/UPLOADS_AND_EXPIRY.md)."""
        return (self.link_client or self.client).presigned_put_object(
            self.bucket(purpose), key, expires=timedelta(seconds=expires_seconds)
        )

    def size(self, purpose: str, key: str) -> int | None:
        """The object's size in bytes; None when there is no such object."""
        try:
            return self.client.stat_object(self.bucket(purpose), key).size
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return None
            raise

    def ping(self) -> None:
        self.client.bucket_exists(self.bucket(IMAGES))


def make_object_store(settings: Settings, probe_timeout: float | None = None) -> ObjectStore:
    """A store whose every call is bounded: connect and read timeouts and a few quick
    retries (the minio defaults are 5 minutes and 5 retries, so a stalled store held a
    request or a GPU pass for half an hour). ``probe_timeout`` builds a client for health
    checks: short timeouts, no retries."""
    if not settings.s3_endpoint:
        raise SettingMissing("DERMASENTINEL_S3_ENDPOINT is not set; run `dermasentinel up` or point it at S3")
    if probe_timeout is not None:
        http_client = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=probe_timeout, read=probe_timeout), retries=False
        )
    else:
        http_client = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=settings.s3_connect_timeout_seconds, read=settings.s3_read_timeout_seconds),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            retries=urllib3.Retry(
                total=settings.s3_retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )

    def client_for(endpoint: str) -> Minio:
        return Minio(
            endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=http_client,
        )

    # Presigning is local computation (the region is fixed), so the public endpoint
    # is never contacted from inside the network.
    link_client = client_for(settings.s3_public_endpoint) if settings.s3_public_endpoint else None
    return ObjectStore(client=client_for(settings.s3_endpoint), settings=settings, link_client=link_client)
