"""Liveness and readiness."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from shared.schemas.common import ResponseModel

# ---------------------------------------------------------------- health


class Liveness(ResponseModel):
    status: Literal["ok"]


class Check(ResponseModel):
    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class Readiness(ResponseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, Check] = Field(description="database, broker, object_store, gpu_workers")
