"""/v1/api-keys: a tenant manages its own keys with any of its active keys."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ContextDep, CurrentTenant, SessionDep, parse_id
from api.problems import problems
from api.services import keys as service
from shared.clock import iso
from shared.lifecycle import fields_for
from shared.schemas import ApiKeyCreated, ApiKeyList, ApiKeyOut
from shared.tenants import KeyInfo

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    label: str | None = Field(default=None, max_length=200)


def view(key: KeyInfo) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id,
        prefix=key.prefix,
        label=key.label,
        created_at=iso(key.created_at),
        last_used_at=iso(key.last_used_at),
        revoked_at=iso(key.revoked_at),
        active=key.revoked_at is None,
    )


@router.get(
    "",
    summary="This tenant's API keys (never the keys themselves), with when each was last used",
    description="Every key of the tenant, revoked ones included, by prefix and label; the keys themselves are "
    "never stored (only their hash).",
    response_model=ApiKeyList,
    response_model_exclude_unset=True,
)
def list_keys(session: SessionDep, tenant: CurrentTenant) -> ApiKeyList:
    return ApiKeyList(data=[view(k) for k in service.list_all(session, tenant)])


@router.post(
    "",
    status_code=201,
    summary="Create an API key; the key is shown only here",
    description="A new key (`dsk_…`) for this tenant with an optional `label`. Store it now: it is never shown "
    "again. At most API_KEYS_PER_TENANT active keys (409 …/quota_exceeded).",
    response_model=ApiKeyCreated,
    response_model_exclude_unset=True,
    responses=problems((409, "`type` …/quota_exceeded: too many active keys; revoke one first")),
)
def create_key(
    context: ContextDep, session: SessionDep, tenant: CurrentTenant, body: ApiKeyIn | None = None
) -> ApiKeyCreated:
    info, key = service.create(context, session, tenant, body.label if body else None)
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
def revoke_key(key_id: str, session: SessionDep, tenant: CurrentTenant) -> ApiKeyOut:
    return view(service.revoke(session, tenant, parse_id(key_id, "API key")))
