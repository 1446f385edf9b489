"""/v1/api-keys: a tenant manages its own keys with any of its active keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.auth import AuthenticatedTenant
from api.deps import ContextDep, SessionDep, authorized, parse_id
from api.problems import problems
from api.services import keys as service
from shared.clock import iso
from shared.lifecycle import fields_for
from shared.schemas import ApiKeyCreated, ApiKeyList, ApiKeyOut
from shared.scopes import Scope
from shared.tenants import KeyInfo

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])

# Who may call each operation, and what its audit row says (api.deps.authorized; issue 22).
ListKeys = Annotated[AuthenticatedTenant, authorized(Scope.keys_manage, "key.list", "api_key")]
CreateKey = Annotated[AuthenticatedTenant, authorized(Scope.keys_manage, "key.create", "api_key")]
RevokeKey = Annotated[AuthenticatedTenant, authorized(Scope.keys_manage, "key.revoke", "api_key", "key_id")]


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, max_length=200, description="What the key is for, e.g. 'EHR bridge'")
    label: str | None = Field(
        default=None, max_length=200, description="`name`'s earlier spelling, used when `name` is absent"
    )
    scopes: list[Scope] | None = Field(
        default=None,
        min_length=1,
        description="What the key may do; by default the scopes of the key that creates it. A key can only grant "
        "scopes it holds itself.",
    )


def view(key: KeyInfo) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id,
        prefix=key.prefix,
        label=key.label,
        created_at=iso(key.created_at),
        last_used_at=iso(key.last_used_at),
        revoked_at=iso(key.revoked_at),
        active=key.revoked_at is None,
        scopes=[Scope(scope) for scope in key.scopes],
    )


@router.get(
    "",
    summary="This tenant's API keys (never the keys themselves), with when each was last used",
    description="Every key of the tenant, revoked ones included, by prefix and label; the keys themselves are "
    "never stored (only their hash).",
    response_model=ApiKeyList,
    response_model_exclude_unset=True,
)
def list_keys(tenant: ListKeys, session: SessionDep) -> ApiKeyList:
    return ApiKeyList(data=[view(k) for k in service.list_all(session, tenant)])


@router.post(
    "",
    status_code=201,
    summary="Create an API key; the key is shown only here",
    description="A new key (`dsk_…`) for this tenant with an optional `name` and its `scopes` (by default those "
    "of the calling key; a key cannot grant a scope it does not hold: 403). Store it now: it is never shown "
    "again. At most API_KEYS_PER_TENANT active keys (409 …/quota_exceeded).",
    response_model=ApiKeyCreated,
    response_model_exclude_unset=True,
    responses=problems(
        (403, "The calling key lacks `keys:manage`, or a scope it asks to grant"),
        (409, "`type` …/quota_exceeded: too many active keys; revoke one first"),
    ),
)
def create_key(
    tenant: CreateKey, context: ContextDep, session: SessionDep, body: ApiKeyIn | None = None
) -> ApiKeyCreated:
    body = body or ApiKeyIn()
    info, key = service.create(context, session, tenant, body.name or body.label, body.scopes, held=tenant.scopes)
    return ApiKeyCreated(**fields_for(ApiKeyCreated, view(info)), key=key)


@router.delete(
    "/{key_id}",
    summary="Revoke an API key (refused for the last active one); requests with it fail within seconds",
    description="The key stops working within AUTH_CACHE_SECONDS. Revoking the tenant's last active key is "
    "refused (409), so a tenant cannot lock itself out.",
    response_model=ApiKeyOut,
    response_model_exclude_unset=True,
    responses=problems(404, (409, "It is the tenant's last active key")),
)
def revoke_key(key_id: str, tenant: RevokeKey, context: ContextDep, session: SessionDep) -> ApiKeyOut:
    return view(service.revoke(context, session, tenant, parse_id(key_id, "API key")))
