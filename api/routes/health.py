"""Liveness, readiness (each dependency reported on its own) and Prometheus metrics."""

from __future__ import annotations

import time

import redis
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from shared.context import AppContext

router = APIRouter(tags=["health"])
PROBE_TIMEOUT = 2.0


@router.get("/healthz", summary="Liveness")
def healthz():
    return {"status": "ok"}


def _probe(check) -> dict:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # a readiness probe reports any failure, it never raises
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def readiness(context: AppContext) -> dict:
    def database():
        with context.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def broker():
        client = redis.Redis.from_url(
            context.settings.broker_url, socket_timeout=PROBE_TIMEOUT, socket_connect_timeout=PROBE_TIMEOUT
        )
        try:
            client.ping()
        finally:
            client.close()

    def object_store():
        context.probe_store.ping()

    checks = {"database": _probe(database), "broker": _probe(broker), "object_store": _probe(object_store)}
    return {"status": "ready" if all(c["ok"] for c in checks.values()) else "unavailable", "checks": checks}


@router.get("/readyz", summary="Readiness of the database, broker and object store")
async def readyz(request: Request):
    body = await run_in_threadpool(readiness, request.app.state.context)
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)


@router.get("/metrics", include_in_schema=False)
def metrics():
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
