"""Liveness and readiness."""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    UrlConstraints,
    WithJsonSchema,
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
