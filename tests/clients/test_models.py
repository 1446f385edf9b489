"""The SDK's typed models are the API's: each class has the fields of the OpenAPI component
schema of its name, the same ones required; and the SDK stands alone (no server package)."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from api.main import create_app
from shared.config import Settings

SDK = Path(__file__).resolve().parents[2] / "clients" / "python" / "dermasentinel_client"


@pytest.fixture(scope="module")
def components() -> dict[str, dict]:
    return create_app(Settings(_env_file=None)).openapi()["components"]["schemas"]


def sdk_models() -> list[type[BaseModel]]:
    from dermasentinel_client import models

    return [cls for _, cls in inspect.getmembers(models, inspect.isclass)
            if issubclass(cls, BaseModel) and cls.__module__ == models.__name__ and not cls.__name__.startswith("_")]


def test_every_model_has_the_fields_of_its_schema_and_the_same_required_ones(components):
    differences = []
    for cls in sdk_models():
        schema = components.get(cls.__name__)
        if schema is None:
            differences.append(f"{cls.__name__}: no such component schema")
            continue
        fields, properties = set(cls.model_fields), set(schema.get("properties", {}))
        required = {name for name, info in cls.model_fields.items() if info.is_required()}
        if fields != properties:
            differences.append(f"{cls.__name__}: SDK only {sorted(fields - properties)}, "
                               f"API only {sorted(properties - fields)}")
        if required != set(schema.get("required", [])):
            differences.append(f"{cls.__name__}: required {sorted(required)} != {sorted(schema.get('required', []))}")
    assert not differences, "clients/python/dermasentinel_client/models.py differs from the API:\n" + "\n".join(
        differences)
    assert len(sdk_models()) >= 50


def test_the_models_the_sdk_returns_cover_what_the_routes_answer(components):
    """Each route the SDK calls answers a schema the SDK has a class for (by name)."""
    names = {cls.__name__ for cls in sdk_models()}
    for wanted in ("AnalysisOut", "AnalysisPage", "BatchOut", "BatchPage", "BatchCanceled", "BatchResults",
                   "UploadOut", "UploadsOut", "UploadSubmissionsOut", "WebhookEndpointWithSecret", "DeliveryList",
                   "ApiKeyList", "AuditEventPage", "ModelList", "QuestionList", "Readiness"):
        assert wanted in names and wanted in components


def test_the_sdk_imports_no_server_package():
    allowed = set(sys.stdlib_module_names) | {"httpx", "pydantic", "tenacity", "dermasentinel_client"}
    found = {}
    for path in SDK.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            found.update({root: path.name for root in roots if root not in allowed})
    assert not found, f"the SDK must install and run on its own: {found}"


def test_the_async_client_has_every_method_of_the_sync_one_but_the_streamed_downloads():
    from dermasentinel_client import AsyncClient, Client

    sync, asynchronous = Client(base_url="http://127.0.0.1:9"), AsyncClient(base_url="http://127.0.0.1:9")
    sync_only = {("batches", name) for name in ("download_results", "errors", "iter_results", "output",
                                                "submit_archive")}
    missing = []
    for resource, methods in vars(sync).items():
        if resource.startswith("_") or not hasattr(methods, "_client"):
            continue
        wanted = [name for name in dir(methods) if not name.startswith("_") and callable(getattr(methods, name))
                  and (resource, name) not in sync_only]
        missing += [f"{resource}.{name}" for name in wanted if not hasattr(getattr(asynchronous, resource, None), name)]
    sync.close()
    assert not missing, f"AsyncClient lacks {missing}"
