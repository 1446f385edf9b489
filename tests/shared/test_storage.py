from shared.config import Settings
from shared.storage import make_object_store

BASE = dict(_env_file=None, s3_endpoint="minio:9000", s3_access_key="ak", s3_secret_key="sk")


def test_presigned_links_use_the_public_endpoint_and_expire():
    store = make_object_store(Settings(**BASE, s3_public_endpoint="files.example.org", presign_ttl_seconds=300))
    url = store.presigned_get("images", "tenants/t/analyses/a/image.jpg")
    assert url.startswith("http://files.example.org/dermasentinel-images/tenants/t/analyses/a/image.jpg?")
    assert "X-Amz-Expires=300" in url


def test_presigned_links_default_to_the_service_endpoint():
    url = make_object_store(Settings(**BASE)).presigned_get("artifacts", "k.png")
    assert url.startswith("http://minio:9000/dermasentinel-artifacts/k.png?")
