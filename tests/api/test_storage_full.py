"""Issue 26: a store out of space is a 507 with Retry-After (not 503 "not reachable"), and
/readyz reports it. Real error objects of the libraries (psycopg, minio, urllib3, the OS) go
through the API's own handlers."""

from __future__ import annotations

import errno

import pytest
import urllib3
from fastapi import FastAPI
from fastapi.testclient import TestClient
from minio.error import S3Error, ServerError
from psycopg import errors as pg_errors
from sqlalchemy.exc import OperationalError

from api import problems
from api.routes.health import NotReady, _checks


def _s3_error(code: str) -> S3Error:
    response = urllib3.response.HTTPResponse(body=b"", status=507 if code != "SlowDown" else 503)
    return S3Error(response, code, "no space", "/dstest-images/a.jpg", "req-1", "host-1")


def _postgres_full() -> OperationalError:
    orig = pg_errors.DiskFull("could not extend file \"base/16384/2619\": No space left on device")
    return OperationalError("INSERT INTO analyses ...", {}, orig)


FULL = {
    "postgres DiskFull": (_postgres_full, "database"),
    "S3 XMinioStorageFull": (lambda: _s3_error("XMinioStorageFull"), "object store"),
    "S3 InsufficientStorage": (lambda: _s3_error("InsufficientStorage"), "object store"),
    "S3 answers 507 without XML": (lambda: ServerError("server failed with HTTP status code 507", 507), "object store"),
    "local disk ENOSPC": (lambda: OSError(errno.ENOSPC, "No space left on device"), "local disk"),
}


def _app(exc_factory) -> TestClient:
    app = FastAPI()
    problems.install(app)

    @app.post("/v1/analyses")
    def upload() -> None:
        raise exc_factory()

    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(autouse=True)
def _fresh_record():
    problems.STORAGE_FULL.clear()
    yield
    problems.STORAGE_FULL.clear()


@pytest.mark.parametrize("case", list(FULL))
def test_out_of_space_is_a_507_with_retry_after_and_readiness_says_so(case):
    factory, store = FULL[case]
    response = _app(factory).post("/v1/analyses")
    assert response.status_code == 507, response.text
    assert response.headers["Retry-After"] == str(problems.STORAGE_FULL_RETRY_AFTER)
    body = response.json()
    assert body["type"].endswith("/insufficient_storage") and store in body["detail"]
    assert problems.STORAGE_FULL.recent() == [store]
    check = _checks_without_services()["storage_space"]
    with pytest.raises(NotReady, match=f"out of space: {store}"):
        check()


def test_unreachable_stays_503_and_other_store_errors_stay_what_they_were():
    down = OperationalError("SELECT 1", {}, pg_errors.ConnectionTimeout("connection timeout expired"))
    assert _app(lambda: down).post("/v1/analyses").status_code == 503
    assert _app(lambda: _s3_error("NoSuchBucket")).post("/v1/analyses").status_code == 500
    assert _app(lambda: OSError(errno.EACCES, "Permission denied")).post("/v1/analyses").status_code == 500
    assert problems.STORAGE_FULL.recent() == []
    assert _checks_without_services()["storage_space"]() == {}


def _checks_without_services():
    class _Context:  # the storage check reads no service; the others are not called
        settings = None

    return _checks(_Context())  # type: ignore[arg-type]
