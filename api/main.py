"""The HTTP edge. ``create_app`` builds everything; nothing happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from api import auth, problems
from api.audit_writer import AuditWriter
from api.auth import KeyCache
from api.capacity import Capacity, api_database_settings
from api.live import ProgressFeed
from api.metrics import ApiMetrics
from api.middleware import BodyGuard, Edge, RequestDeadline, TenantGate
from api.openapi import contract, docs, webhooks
from api.ratelimit import Limiter
from api.routes import analyses, health
from shared.config import Settings, get_settings
from shared.context import AppContext
from shared.logs import configure_logging
from shared.memory import return_image_memory_promptly
from shared.priority import lower_priority
from shared.tracing import configure_tracing

STATIC_DIR = Path(__file__).parent / "static"

log = logging.getLogger(__name__)

API_DESCRIPTION = """Asynchronous melanoma screening of skin-lesion photos. Research and decision-support
use only: DermaSentinel is NOT a certified medical device, and output of `untrained` weights
(`model.weights`) carries no meaning.

Submit an image (`POST /v1/analyses`), then poll `GET /v1/analyses/{id}` or receive the events
under **Webhooks**. Every request but `/healthz`, `/readyz` and these docs needs
`Authorization: Bearer dsk_…`. Errors are RFC 7807 `application/problem+json`; the `type`
ends in a stable code (under `/fhir`, the same problem as a FHIR `OperationOutcome`). Every
response carries `X-Request-ID`."""
TAGS = [
    {"name": "analyses", "description": "Submit images, read results, reports and FHIR bundles, give feedback"},
    {"name": "batches", "description": "Bulk screening: progress, ETA and the triage list"},
    {"name": "uploads", "description": "Direct uploads to the object store for large backlogs"},
    {"name": "webhooks", "description": "Endpoints that receive signed events, and their delivery log"},
    {"name": "api keys", "description": "The tenant's own API keys"},
    {"name": "fhir", "description": "The `/fhir` base (FHIR R4B): CapabilityStatement, SubscriptionTopics, and "
     "Subscriptions (R5 Backport IG) with `$status` and `$events`; errors are OperationOutcomes"},
    {"name": "models", "description": "The registered model versions and their model cards"},
    {"name": "health", "description": "Liveness and readiness probes (no API key)"},
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    lower_priority(settings.nice)  # NICE (issue 27): `up` runs the API below the analysis worker
    # uvicorn's own loggers too, in LOG_FORMAT, written by a thread of their own so that no
    # line (a traceback least of all) is formatted on the event loop (docs/OBSERVABILITY.md).
    configure_logging(settings, background=True)
    configure_tracing("dermasentinel-api")  # OTEL_* variables; off unless an exporter is named (issue 25)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # More threads than the work allowed to hold a connection, so a request that holds
        # one always finds a thread for its next step (docs/API_HARDENING.md).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        return_image_memory_promptly()
        context = AppContext(api_database_settings(settings))
        context.store.ensure_buckets()
        app.state.context = context
        app.state.metrics.start()  # on METRICS_PORT, never the public port (issue 22)
        # Revoked keys and disabled or deleted tenants are dropped from the key cache at once.
        listener = asyncio.ensure_future(auth.listen_for_revocations(settings, app.state.key_cache))
        app.state.progress_feed.start()  # issue 25: what the open event streams follow (api.live)
        yield
        await app.state.progress_feed.close()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await app.state.limiter.close()
        app.state.metrics.close()
        context.close()

    # Swagger UI and ReDoc assets come from the fastapi-offline package (mounted at
    # docs.ASSETS); docs.install serves the pages: they render with no internet
    # (tests/e2e/test_docs_offline.py).
    app = FastAPIOffline(
        title="DermaSentinel API",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=TAGS,
        docs_url=None,
        redoc_url=None,
        static_url=docs.ASSETS,
    )
    app.state.limiter = Limiter(settings)
    # Issue 26: a tenant's request places are counted across replicas on the limiter's Redis.
    app.state.capacity = Capacity(settings, cluster=app.state.limiter.places)
    app.state.audit_writer = AuditWriter(lambda: app.state.context, app.state.capacity)  # issue 22
    app.state.key_cache = KeyCache(settings.auth_cache_seconds)
    app.state.progress_feed = ProgressFeed(lambda: app.state.context, settings.sse_poll_seconds)
    app.state.metrics = ApiMetrics(settings)
    problems.install(app)
    auth.install(app)  # issue 22: a deleted tenant's cached key is a 401, not a 500
    webhooks.install(app)
    contract.install(app)
    docs.install(app)
    for module in (health, analyses):
        app.include_router(module.router)
    _install_optional_routers(app)
    # Added last, runs first: Edge wraps everything, BodyGuard runs before any route, and
    # TenantGate lets only a few requests further at once, fairly between tenants.
    app.add_middleware(
        TenantGate, key_cache=app.state.key_cache, capacity=app.state.capacity, limiter=app.state.limiter
    )
    app.add_middleware(RequestDeadline, settings=settings)  # issue 11: 503 when a dependency stalls
    app.add_middleware(BodyGuard, settings=settings)
    app.add_middleware(Edge, settings=settings)

    # The web app is ES modules (api/static/js/), which browsers run only when served with a
    # JavaScript type; some hosts' MIME tables map .js to text/plain (and nosniff is on).
    mimetypes.add_type("text/javascript", ".js")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def web_app() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    return app


def _install_optional_routers(app: FastAPI) -> None:
    from api.routes import batches, webhook_endpoints

    app.include_router(batches.router)
    from api.routes import batch_files
    app.include_router(batch_files.router)  # issue 25: archive in, output and errors files out
    app.include_router(webhook_endpoints.router)
    from api.routes import keys
    app.include_router(keys.router)
    from api.routes import uploads
    app.include_router(uploads.router)
    from api.routes import questions
    app.include_router(questions.router)
    from api.routes import models as model_routes
    app.include_router(model_routes.router)
    app.include_router(model_routes.registry_router)  # issue 24: GET /v1/models, the model cards
    from api.routes import dispositions
    app.include_router(dispositions.router)
    from api.routes import audit as audit_routes
    app.include_router(audit_routes.router)
    from api.routes import erasure
    app.include_router(erasure.router)
    from api.routes import fhir
    app.include_router(fhir.router)
    from api.routes import fhir_destination
    app.include_router(fhir_destination.router)
    from api.routes import dicomweb_destination
    app.include_router(dicomweb_destination.router)
    from api.routes import dicom
    app.include_router(dicom.router)
    from api.routes import monitoring as monitoring_routes
    app.include_router(monitoring_routes.router)
