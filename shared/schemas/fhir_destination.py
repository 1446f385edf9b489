"""The tenant's FHIR write-back destination (issue 23; docs/FHIR_WRITEBACK.md): an EHR's FHIR
server reached with SMART Backend Services, sent every report as a transaction Bundle."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, UrlConstraints

from shared.schemas.common import ResponseModel, Timestamp, Url
from shared.schemas.webhooks import DeliveryOut
from shared.smart_backend import DEFAULT_SCOPES

FhirUrl = Annotated[HttpUrl, UrlConstraints(max_length=2048)]


class FhirDestinationIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "base_url": "https://ehr.example.org/fhir/R4",
                    "token_url": "https://ehr.example.org/oauth2/token",
                    "client_id": "dermasentinel-backend",
                    "private_key_jwk": {"kty": "EC", "crv": "P-384", "kid": "ds-2026-12", "x": "…", "y": "…",
                                        "d": "…"},
                    "enabled": True,
                }
            ]
        },
    )

    base_url: FhirUrl = Field(description="The FHIR server's base URL (R4): the transaction Bundle is POSTed here")
    token_url: FhirUrl = Field(description="The EHR's OAuth 2.0 token endpoint (SMART Backend Services)")
    client_id: str = Field(min_length=1, max_length=200, description="The client id the EHR registered for "
                           "DermaSentinel: the client assertion's `iss` and `sub`")
    private_key_jwk: dict[str, Any] | None = Field(
        default=None,
        description="The private key that signs client assertions, as a JWK: RSA (RS384, at least 2048 bits) or EC "
        "P-384 (ES384); `alg` defaults by key type, `kid` to the key's RFC 7638 thumbprint. Stored encrypted and "
        "never shown again (the answers show the public key). Required when no destination exists; left out on "
        "a later PUT, the stored key stays",
    )
    scopes: str = Field(
        default=DEFAULT_SCOPES, min_length=1, max_length=1000,
        description="The scopes requested with each token (SMART v2; conditional creates need create and search)",
    )
    enabled: bool = Field(default=True, strict=True, description="Whether reports are written back")


class FhirDestinationOut(ResponseModel):
    id: uuid.UUID
    base_url: Url
    token_url: Url
    client_id: str
    scopes: str
    alg: Literal["RS384", "ES384"]
    kid: str
    public_jwk: dict[str, Any] = Field(description="The public key to register at the EHR (kty and its public "
                                       "numbers, `kid`, `alg`, `use`); the private key is never shown")
    events: list[str] = Field(description="The events written back: `analysis.report_ready`")
    enabled: bool
    disabled_reason: str | None
    failing_since: Timestamp | None
    created_at: Timestamp
    last_delivery: DeliveryOut | None = Field(description="The most recent write-back, with every attempt")
