"""DermaSentinel's Python client: ``Client`` (sync) and ``AsyncClient`` (asyncio) on httpx.

    from dermasentinel_client import Client

    with Client(base_url="http://127.0.0.1:8000", api_key="dsk_…") as client:
        analysis = client.analyses.create(image="lesion.jpg", age=61, sex="male", site="torso", wait=True)
        print(analysis.status, analysis.result.disposition if analysis.result else None)

Research use only; DermaSentinel is not a certified medical device.
"""

from dermasentinel_client import models
from dermasentinel_client._client import AsyncClient, Client, __version__
from dermasentinel_client._operations import FINAL_ANALYSIS, FINAL_BATCH, FolderSubmission, UploadProgress
from dermasentinel_client._transport import RetryPolicy
from dermasentinel_client.errors import (
    ApiError,
    DermaSentinelError,
    NotTheApi,
    StorageRefused,
    WaitTimeout,
)
from dermasentinel_client.webhooks import WebhookVerificationError, verify

__all__ = [
    "FINAL_ANALYSIS",
    "FINAL_BATCH",
    "ApiError",
    "AsyncClient",
    "Client",
    "DermaSentinelError",
    "FolderSubmission",
    "NotTheApi",
    "RetryPolicy",
    "StorageRefused",
    "UploadProgress",
    "WaitTimeout",
    "WebhookVerificationError",
    "__version__",
    "models",
    "verify",
]
