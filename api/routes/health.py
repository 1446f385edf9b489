"""Liveness, readiness (each dependency reported on its own) and Prometheus metrics.

``/healthz`` touches nothing, so it answers while any dependency stalls. ``/readyz`` runs
every check at once, each in its own small thread pool under its own deadline, so a
stalled dependency shows as "did not answer" within ``PROBE_TIMEOUT`` seconds instead of
holding the probe. Answers never carry exception text (it can name hosts and users); the
log has the detail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.metrics import ApiMetrics
from api.problems import STORAGE_FULL, STORAGE_FULL_REPORT_SECONDS, Unauthorized
from shared.context import AppContext
from shared.jobs import broker_redis, gpu_worker_census, heartbeat_window
from shared.schemas import Liveness, Readiness

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])
PROBE_TIMEOUT = 1.5


@cache
def _probe_pool() -> ThreadPoolExecutor:
    # A probe stuck on a stalled dependency keeps its thread until its own socket timeout;
    # a bounded pool keeps repeated probes from piling up threads meanwhile.
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="readyz")


class NotReady(Exception):
    """A check's own verdict; its message is ours and safe to show."""


@router.get(
    "/healthz",
    summary="Liveness",
    description="Touches no dependency: answers while the database, broker or object store stall.",
    response_model=Liveness,
    response_model_exclude_unset=True,
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _probe(check: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    try:
        detail = await asyncio.wait_for(loop.run_in_executor(_probe_pool(), check), PROBE_TIMEOUT)
    except TimeoutError:
        return {"ok": False, "error": f"did not answer within {PROBE_TIMEOUT:g} s"}
    except NotReady as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # a readiness probe reports any failure, it never raises
        log.warning("readiness check %s failed: %s", getattr(check, "__name__", "?"), exc)
        return {"ok": False, "error": f"unreachable ({type(exc).__name__})"}
    result = {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
    result.update(detail or {})
    return result


def _checks(context: AppContext) -> dict[str, Callable[[], dict[str, Any] | None]]:
    settings = context.settings

    def database() -> None:
        with context.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def broker() -> None:
        client = broker_redis(settings, timeout=PROBE_TIMEOUT)
        try:
            client.ping()
        finally:
            client.close()

    def object_store() -> None:
        context.probe_store.ping()

    def gpu_workers() -> dict[str, Any]:
        # GPU pool processes write a heartbeat to the broker's Redis every few seconds
        # once their models are loaded (worker.celery_app.GpuMembership): one small read.
        client = broker_redis(settings, timeout=PROBE_TIMEOUT)
        try:
            ready, broken = gpu_worker_census(client, heartbeat_window(settings))
        finally:
            client.close()
        if not ready:
            why = f"; {len(broken)} cannot load their models" if broken else ""
            raise NotReady(f"no GPU worker is consuming analysis jobs{why}")
        return {"ready": len(ready), "broken": len(broken)}

    def storage_space() -> dict[str, Any]:
        # Issue 26: a store out of space still answers a ping; the writes that met it say so.
        full = STORAGE_FULL.recent()
        if full:
            raise NotReady(f"out of space: {', '.join(full)} (a write was refused within "
                           f"{STORAGE_FULL_REPORT_SECONDS:g} s)")
        return {}

    return {"database": database, "broker": broker, "object_store": object_store, "gpu_workers": gpu_workers,
            "storage_space": storage_space}


async def check_readiness(context: AppContext, optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every check runs and is reported; those named in ``optional`` do not make it unready."""
    checks = _checks(context)
    results = await asyncio.gather(*(_probe(check) for check in checks.values()))
    body = dict(zip(checks, results, strict=True))
    ready = all(c["ok"] for name, c in body.items() if name not in optional)
    return {"status": "ready" if ready else "unavailable", "checks": body}


def readiness(context: AppContext) -> dict[str, Any]:
    """The same checks from synchronous code (commands, tests)."""
    return asyncio.run(check_readiness(context))


@router.get(
    "/readyz",
    summary="Readiness of the database, broker, object store and GPU workers",
    response_model=Readiness,
    response_model_exclude_unset=True,
    responses={503: {"description": "Not ready: the same body, with the failing checks", "model": Readiness}},
)
async def readyz(request: Request, optional: str = "") -> JSONResponse:
    """503 unless every check passes. `?optional=gpu_workers` still reports that check but
    does not fail on it: an API pod that should keep accepting (queued) submissions and
    serving results while no GPU worker is up uses it as its readiness probe."""
    names = frozenset(name.strip() for name in optional.split(",") if name.strip())
    body = await check_readiness(request.app.state.context, names)
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """This API process's HTTP figures, then the whole system's backlog (queue depth per lane,
    jobs by state, oldest queued job) read from Redis and Postgres: here only with
    ``METRICS_TOKEN`` set and sent as a bearer token; else on ``METRICS_PORT`` (``api.metrics``).
    Without a token this path is a 404 like any unknown one. The workers' own figures are on
    their METRICS_PORT (docs/OBSERVABILITY.md)."""
    served: ApiMetrics = request.app.state.metrics
    if not served.token:
        raise StarletteHTTPException(404, "Not Found")
    if not served.allows(request.headers.get("authorization")):
        raise Unauthorized(
            "send the metrics token as 'Authorization: Bearer …'", headers={"WWW-Authenticate": "Bearer"}
        )
    return Response(generate_latest(served.registry), media_type=CONTENT_TYPE_LATEST)
