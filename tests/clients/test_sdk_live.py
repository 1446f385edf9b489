"""The SDK against the real stack (API, workers, Postgres, Redis, S3): submit and wait, a folder
as a batch with progress, every page of a list, a webhook the API really signed; the file-based
batch when the API has its routes."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from dermasentinel_client import AsyncClient, Client, WebhookVerificationError, verify

from devstack import Receiver
from worker.pipeline.synthetic import encode_jpeg, make_lesion

FOLDER_IMAGES = 5


@pytest.fixture
def client(api_url, tenant_key):
    with Client(base_url=api_url, api_key=tenant_key[1]) as sdk:
        yield sdk


def _lesion(seed: int) -> bytes:
    return encode_jpeg(make_lesion(seed=seed, size=(96, 128), radius_frac=0.22).image)


def test_submit_and_wait_sync_and_async(client, api_url, tenant_key, worker, tmp_path):
    photo = tmp_path / "lesion.jpg"
    photo.write_bytes(_lesion(3))
    analysis = client.analyses.create(photo, age=61, sex="male", site="torso", external_id="sdk-1",
                                      wait=True, timeout=180)
    assert analysis.status == "succeeded" and analysis.result is not None
    assert analysis.result.disposition == "clinician_review" and analysis.model is not None
    replay = client.analyses.create(photo, idempotency_key="visit-7", age=61)
    assert client.analyses.create(photo, idempotency_key="visit-7", age=61).id == replay.id, "replayed, not twice"

    async def from_asyncio():
        async with AsyncClient(base_url=api_url, api_key=tenant_key[1]) as sdk:
            direct = await sdk.analyses.create(_lesion(4), direct=True, external_id="sdk-2", wait=True, timeout=180)
            listed = [a.id async for a in sdk.analyses.list(page_size=1)]
            assert [k.active async for k in sdk.api_keys.list()] == [True]
            return direct, listed

    direct, listed = asyncio.run(from_asyncio())
    assert direct.status == "succeeded" and direct.external_id == "sdk-2"
    assert listed == [direct.id, replay.id, analysis.id], "newest first, one page each"


def test_a_folder_becomes_a_batch_with_progress_and_its_pages_list_every_item(client, tmp_path):
    folder = tmp_path / "clinic-backlog"
    folder.mkdir()
    for n in range(FOLDER_IMAGES):
        (folder / f"img{n}.jpg").write_bytes(_lesion(10 + n))
    (folder / "notes.txt").write_text("not an image")
    seen = []
    done = client.batches.submit_folder(folder, metadata={"img0.jpg": {"age": 40, "external_id": "first"}},
                                        concurrency=2, seal=False, on_progress=seen.append)
    assert done.batch.name == "clinic-backlog" and done.batch.total == FOLDER_IMAGES and not done.refused
    assert [p.done for p in seen] == list(range(1, FOLDER_IMAGES + 1))
    assert seen[-1].accepted == FOLDER_IMAGES and {p.path.name for p in seen} == {f"img{n}.jpg" for n in range(5)}

    pages = list(client.analyses.list(batch_id=str(done.batch.id), page_size=2))  # three pages
    assert sorted(a.id for a in pages) == sorted(a.id for a in done.accepted.values())
    first = next(a for a in pages if a.external_id == "first")
    assert first.inputs.age == 40
    assert [b.id for b in client.batches.list(name="clinic-backlog")] == [done.batch.id]
    assert len(list(client.api_keys.list())) == 1, "a list without pages is iterated the same way"

    # A rerun into the same batch replays each image (its key is the batch and the image's hash).
    again = client.batches.submit_folder(folder, batch_id=str(done.batch.id), seal=True)
    assert again.batch.total == FOLDER_IMAGES and again.batch.state in ("sealed", "completed")


def test_a_webhook_the_api_signed_verifies(client, worker, beat, wait):
    with Receiver() as hook:
        endpoint = client.webhooks.create_endpoint(hook.url, description="EHR")
        assert [e.id for e in client.webhooks.list_endpoints()] == [endpoint.id]
        client.webhooks.send_test(endpoint.id)
        wait(lambda: hook.requests, timeout=60, message="the test event")
        delivered = hook.requests[0]
        logged = wait(lambda: [d for d in client.webhooks.deliveries(endpoint.id) if d.status == "delivered"],
                      timeout=30, message="the delivery log")
    assert logged[0].attempts[0].status_code == 200
    event = client.webhooks.verify(delivered.headers, delivered.body.encode(), endpoint.secret)
    assert event["type"] == "webhook.test"
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify(delivered.headers, delivered.body.replace("webhook.test", "analysis.succeeded"), endpoint.secret)


def test_a_file_based_batch_when_the_api_has_it(client, api_url, worker, tmp_path, wait):
    if "/v1/batches/{batch_id}/archive" not in httpx.get(f"{api_url}/openapi.json").json()["paths"]:
        pytest.skip("this API has no file-based batches (POST /v1/batches/{id}/archive)")
    import zipfile

    archive = tmp_path / "backlog.zip"
    with zipfile.ZipFile(archive, "w") as packed:
        lines = ["filename,age,sex,site"]
        for n in range(3):
            packed.writestr(f"img{n}.jpg", _lesion(20 + n))
            lines.append(f"img{n}.jpg,50,female,torso")
        lines.append("missing.jpg,50,female,torso")
        packed.writestr("manifest.csv", "\n".join(lines) + "\n")
    sent = []
    batch = client.batches.submit_archive(archive, on_progress=lambda n, total: sent.append((n, total)))
    assert sent and sent[-1][0] == sent[-1][1] == archive.stat().st_size
    ended = client.batches.wait(batch.id, timeout=240)
    assert ended.state == "completed"
    assert len(list(client.batches.output(batch.id))) == 3
    assert any("missing.jpg" in str(line) for line in client.batches.errors(batch.id))
