"""Creating tenants, environments and API keys; resolving a presented key to its scope."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.ids import new_id
from flexsync.kit.errors import AlreadyExists, NotFound, ValidationFailed
from flexsync.kit.text import NUL, NUL_PROBLEM
from flexsync.models import ApiKey, Environment, Tenant, max_length, utcnow

API_KEY_PREFIX = "fsk_"
MAX_NAME_LENGTH = min(max_length(Tenant.name), max_length(Environment.name), max_length(ApiKey.name))


@dataclass(frozen=True, slots=True)
class Scope:
    """Who is asking: every read and write of a request is limited to this tenant and environment."""

    tenant_id: str
    environment_id: str
    api_key_id: str


@dataclass(frozen=True, slots=True)
class IssuedKey:
    id: str
    key: str
    tenant_id: str
    environment_id: str


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _check_id(value: str, what: str) -> None:
    if not value or len(value) > 64 or not all(c.isalnum() or c in "_-" for c in value):
        raise ValidationFailed(f"{what} id must be 1-64 letters, digits, '_' or '-'")


def _checked_name(name: str, what: str, *, blank_allowed: bool = False) -> str:
    """The name trimmed, once it fits its column (255 characters) and holds no NUL character."""
    trimmed = name.strip()
    if not trimmed and not blank_allowed:
        raise ValidationFailed(f"{what} name must not be blank")
    if len(trimmed) > MAX_NAME_LENGTH:
        raise ValidationFailed(f"{what} name must be at most {MAX_NAME_LENGTH} characters")
    if NUL in trimmed:
        raise ValidationFailed(f"{what} name {NUL_PROBLEM}")
    return trimmed


async def create_tenant(session: AsyncSession, name: str, tenant_id: str | None = None) -> Tenant:
    tenant_id = tenant_id or new_id("tenant")
    _check_id(tenant_id, "tenant")
    name = _checked_name(name, "tenant")
    if await session.get(Tenant, tenant_id) is not None:
        raise AlreadyExists(f"tenant {tenant_id} already exists")
    tenant = Tenant(id=tenant_id, name=name)
    session.add(tenant)
    await session.flush()
    return tenant


async def create_environment(
    session: AsyncSession, tenant_id: str, name: str, environment_id: str | None = None
) -> Environment:
    environment_id = environment_id or new_id("env")
    _check_id(environment_id, "environment")
    name = _checked_name(name, "environment")
    if await session.get(Tenant, tenant_id) is None:
        raise NotFound(f"tenant {tenant_id} not found")
    if await session.get(Environment, environment_id) is not None:
        raise AlreadyExists(f"environment {environment_id} already exists")
    environment = Environment(id=environment_id, tenant_id=tenant_id, name=name)
    session.add(environment)
    await session.flush()
    return environment


async def create_api_key(session: AsyncSession, tenant_id: str, environment_id: str, name: str = "") -> IssuedKey:
    name = _checked_name(name, "API key", blank_allowed=True)
    environment = await session.get(Environment, environment_id)
    if environment is None or environment.tenant_id != tenant_id:
        raise NotFound(f"environment {environment_id} not found in tenant {tenant_id}")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        environment_id=environment_id,
        key_hash=hash_api_key(key),
        display_prefix=key[:10],
        name=name,
    )
    session.add(row)
    await session.flush()
    return IssuedKey(id=row.id, key=key, tenant_id=tenant_id, environment_id=environment_id)


async def revoke_api_key(session: AsyncSession, api_key_id: str) -> None:
    row = await session.get(ApiKey, api_key_id)
    if row is None:
        raise NotFound(f"api key {api_key_id} not found")
    row.revoked_at = row.revoked_at or utcnow()


async def resolve_api_key(session: AsyncSession, key: str) -> Scope | None:
    row = (
        await session.execute(
            select(ApiKey.id, ApiKey.tenant_id, ApiKey.environment_id).where(
                ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None)
            )
        )
    ).first()
    if row is None:
        return None
    return Scope(tenant_id=row.tenant_id, environment_id=row.environment_id, api_key_id=row.id)


@dataclass(frozen=True, slots=True)
class Bootstrap:
    tenant_id: str
    environment_id: str
    api_key: IssuedKey
    created: bool


async def bootstrap(session: AsyncSession, *, new_key_when_present: bool = True) -> Bootstrap | None:
    """Create the default tenant, environment and key on an empty database.

    On a database that already has a tenant, issue a fresh key for its first environment
    (unless `new_key_when_present` is false, when nothing is done and None is returned).
    """
    tenant = (await session.execute(select(Tenant).order_by(Tenant.created_at, Tenant.id).limit(1))).scalar()
    if tenant is None:
        tenant = await create_tenant(session, "Default tenant")
        environment = await create_environment(session, tenant.id, "development")
        key = await create_api_key(session, tenant.id, environment.id, name="bootstrap")
        return Bootstrap(tenant.id, environment.id, key, created=True)
    if not new_key_when_present:
        return None
    environment_row = (
        await session.execute(
            select(Environment)
            .where(Environment.tenant_id == tenant.id)
            .order_by(Environment.created_at, Environment.id)
            .limit(1)
        )
    ).scalar()
    environment = environment_row or await create_environment(session, tenant.id, "development")
    key = await create_api_key(session, tenant.id, environment.id, name="bootstrap")
    return Bootstrap(tenant.id, environment.id, key, created=False)
