"""How the client commands reach the API: through the Python SDK (``dermasentinel_client``,
clients/python), the one HTTP client of the repo. Its answers are the SDK's typed models, so a
command reads fields by name and a renamed field fails at the first parse, not in the middle of
printing; its errors (``ApiError``, httpx's transport errors) are explained once, in cli/errors.py."""

from __future__ import annotations

from dermasentinel_client import ApiError, Client, NotTheApi, StorageRefused, WaitTimeout

__all__ = ["ApiError", "Client", "NotTheApi", "StorageRefused", "WaitTimeout", "connect"]


def connect(api_url: str | None, api_key: str | None, timeout: float = 60.0) -> Client:
    """The SDK's client for ``api_url`` with ``api_key``, or a one-line exit saying which is missing."""
    if not api_url:
        raise SystemExit("no API URL: run `dermasentinel up`, or pass --api-url / set DERMASENTINEL_API_URL")
    if not api_key:
        raise SystemExit("no API key: pass --api-key / set DERMASENTINEL_API_KEY")
    return Client(base_url=api_url, api_key=api_key, timeout=timeout)
