"""The HTTP edge. ``create_app`` builds everything; nothing happens at import time."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter, Histogram

from api import problems
from api.routes import analyses, health
from shared.config import Settings, get_settings
from shared.context import AppContext

STATIC_DIR = Path(__file__).parent / "static"
REQUESTS = Counter("dermasentinel_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("dermasentinel_http_request_seconds", "HTTP request latency", ["method", "route"])

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        context = AppContext(settings)
        context.store.ensure_buckets()
        app.state.context = context
        yield
        context.close()

    app = FastAPI(
        title="DermaSentinel API",
        version="0.1.0",
        description=(
            "Asynchronous melanoma screening of skin-lesion photos. Research and decision-support "
            "use only: DermaSentinel is NOT a certified medical device."
        ),
        lifespan=lifespan,
    )
    problems.install(app)
    for module in (health, analyses):
        app.include_router(module.router)
    _install_optional_routers(app)

    @app.middleware("http")
    async def _metrics(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        LATENCY.labels(request.method, path).observe(time.perf_counter() - started)
        return response

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def web_app():
        return FileResponse(STATIC_DIR / "index.html")

    return app


def _install_optional_routers(app: FastAPI) -> None:
    from api.routes import batches, webhook_endpoints

    app.include_router(batches.router)
    app.include_router(webhook_endpoints.router)
