"""Business rules for Stripe connections. Services flush but never commit: the caller owns the transaction.

Secrets are encrypted with the process's SecretBox as soon as they are accepted; only `secret_key_last4`
and the (public) publishable key are kept in plain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

import stripe
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.config import Settings
from flexsync.connections import repository, secrets
from flexsync.connections.accounts import unsaved_account
from flexsync.connections.schemas import (
    MAX_WEBHOOK_SECRETS,
    NOT_NULLABLE,
    ConnectionCreate,
    ConnectionUpdate,
    key_mode,
)
from flexsync.connections.settings import effective_settings
from flexsync.context import AppContext
from flexsync.crypto import SecretBox
from flexsync.ids import new_id
from flexsync.kit.errors import AlreadyExists, NotFound, ValidationFailed
from flexsync.models import StripeConnection, utcnow
from flexsync.stripe.calls import StripeAccount, StripeCaller, StripeCallFailed
from flexsync.tenancy.service import Scope

WEBHOOK_SECRET_CHANGES = ("webhook_secret", "add_webhook_secret", "remove_old_webhook_secrets")


def connection_to_dict(connection: StripeConnection, settings: Settings) -> dict[str, Any]:
    """The public connection object: every field at the top level, never a secret."""
    return {
        "id": connection.id,
        "name": connection.name,
        "provider": connection.provider,
        "status": connection.status,
        "mode": connection.mode,
        "secret_key_last4": connection.secret_key_last4,
        "publishable_key": connection.publishable_key,
        "webhook_secret_set": bool(connection.webhook_secrets_encrypted),
        "webhook_secrets_count": len(connection.webhook_secrets_encrypted),
        "webhook_url": settings.webhook_url(connection.tenant_id, connection.environment_id),
        "settings": effective_settings(connection.settings).model_dump(),
        "stripe_account_id": connection.stripe_account_id,
        "tenant_id": connection.tenant_id,
        "environment_id": connection.environment_id,
        "created_at": connection.created_at,
        "updated_at": connection.updated_at,
    }


@dataclass(frozen=True, slots=True)
class Verified:
    """Stripe accepted the key. `account_id` is known when Stripe lets the key read its account."""

    account_id: str | None


async def verify_with_stripe(secret_key: str, db: AppContext) -> Verified:
    """Prove the key works for what the sync does (reading customers), then learn its account if allowed.

    Through a StripeCaller like every Stripe request (metrics, classification); not rate limited, as the key
    belongs to no saved connection yet. Stripe's own error messages are not passed on: some quote the key.
    """
    async with StripeCaller(db.settings, db.sessions) as caller:
        return await _verify(caller, unsaved_account(secret_key))


async def _verify(caller: StripeCaller, account: StripeAccount) -> Verified:
    try:
        await caller.call(account, "customers.list", lambda client: client.v1.customers.list_async({"limit": 1}))
    except StripeCallFailed as failure:
        _refuse(failure.__cause__)
    try:
        current = await caller.call(account, "accounts.retrieve", lambda c: c.v1.accounts.retrieve_current_async())
    except StripeCallFailed:
        # Restricted keys may lack the account permission, and some Stripe stand-ins lack the endpoint:
        # the key is still good for the sync.
        return Verified(account_id=None)
    return Verified(account_id=current.id)


def _refuse(exc: BaseException | None) -> NoReturn:
    """The key's check failed with Stripe's `exc`: say why, in words that never quote the key."""
    if isinstance(exc, stripe.AuthenticationError):
        raise ValidationFailed(
            "Stripe rejected the secret key (authentication failed): check that it is current and copied in full",
            {"fields": {"secret_key": "rejected by Stripe"}},
        ) from None
    if isinstance(exc, stripe.PermissionError):
        raise ValidationFailed(
            "the key may not read customers in Stripe: give the restricted key read and write access to Customers",
            {"fields": {"secret_key": "lacks the Customers permission"}},
        ) from None
    if isinstance(exc, stripe.APIConnectionError) or not isinstance(exc, stripe.StripeError):
        raise ValidationFailed(
            "Stripe could not be reached to verify the key; try again, or save without verify",
            {"fields": {"verify": "Stripe unreachable"}},
        ) from None
    raise ValidationFailed(
        f"Stripe did not accept the verification request (HTTP {exc.http_status})",
        {"fields": {"verify": "Stripe error"}, "stripe_status": exc.http_status},
    ) from None


def _check_same_mode(secret_mode: str, publishable_mode: str) -> None:
    if secret_mode != publishable_mode:
        raise ValidationFailed(
            f"the secret key is a {secret_mode}-mode key but the publishable key is a {publishable_mode}-mode key: "
            "use both keys from the same mode",
            {"fields": {"publishable_key": f"must be a {secret_mode}-mode key"}},
        )


def _already_exists(existing_id: str | None) -> AlreadyExists:
    details: dict[str, Any] = {"fields": {"provider": "already connected"}}
    if existing_id is not None:
        details["connection_id"] = existing_id
    return AlreadyExists(
        "this environment already has a Stripe connection: update it, or delete it before adding another", details
    )


async def check_new(session: AsyncSession, scope: Scope, data: ConnectionCreate) -> None:
    """Refuse a connection `create_connection` would refuse (keys of two modes, an environment connected
    already), without saving anything: for checks that must pass before Stripe is asked to make something."""
    _check_same_mode(key_mode(data.secret_key.get_secret_value()), key_mode(data.publishable_key))
    existing = await repository.get_live_connection(session, scope.tenant_id, scope.environment_id)
    if existing is not None:
        raise _already_exists(existing.id)


async def create_connection(
    session: AsyncSession,
    box: SecretBox,
    scope: Scope,
    data: ConnectionCreate,
    verified: Verified | None,
    *,
    connection_id: str | None = None,
) -> StripeConnection:
    await check_new(session, scope, data)
    secret_key = data.secret_key.get_secret_value()
    now = utcnow()
    connection = StripeConnection(
        id=connection_id or new_id("conn"),
        tenant_id=scope.tenant_id,
        environment_id=scope.environment_id,
        name=data.name,
        provider=data.provider,
        status="active",
        mode=key_mode(secret_key),
        secret_key_encrypted=box.encrypt(secret_key),
        secret_key_last4=secret_key[-4:],
        publishable_key=data.publishable_key,
        webhook_secrets_encrypted=[box.encrypt(data.webhook_secret.get_secret_value())] if data.webhook_secret else [],
        stripe_account_id=verified.account_id if verified else None,
        settings=data.settings.model_dump(exclude_unset=True),
        created_at=now,
        updated_at=now,
    )
    session.add(connection)
    try:
        await session.flush()
    except IntegrityError as exc:
        # Another request created the environment's connection between our check and our insert.
        raise _already_exists(None) from exc
    return connection


async def find(
    session: AsyncSession, scope: Scope, connection_id: str, *, for_update: bool = False
) -> StripeConnection:
    connection = await repository.get(session, scope, connection_id, for_update=for_update)
    if connection is None:
        raise NotFound(f"connection {connection_id} not found")
    return connection


def _check_update(data: ConnectionUpdate) -> None:
    given = data.model_fields_set
    for name in NOT_NULLABLE:
        if name in given and getattr(data, name) is None:
            raise ValidationFailed(f"{name} must not be null", {"fields": {name: "must not be null"}})
    # `remove_old_webhook_secrets: false` asks for nothing, so a form may always send it.
    changes = [name for name in WEBHOOK_SECRET_CHANGES if name in given and getattr(data, name) is not False]
    if data.manage_webhook_endpoint:
        changes.append("manage_webhook_endpoint")
    if len(changes) > 1:
        raise ValidationFailed(
            f"give only one of {', '.join(WEBHOOK_SECRET_CHANGES)} per request",
            {"fields": dict.fromkeys(changes, "conflicts with another webhook secret change")},
        )


def check_update(connection: StripeConnection, data: ConnectionUpdate) -> None:
    """Refuse an update `update_connection` would refuse, without changing anything: for checks that must
    pass before Stripe is asked to change something (the managed webhook endpoint)."""
    _check_update(data)
    _checked_keys(connection, data)


def _checked_keys(connection: StripeConnection, data: ConnectionUpdate) -> tuple[str | None, str]:
    """The update's new secret key (None: unchanged) and the publishable key the connection ends up with."""
    secret_key = data.secret_key.get_secret_value() if data.secret_key is not None else None
    secret_mode = key_mode(secret_key) if secret_key is not None else connection.mode
    if secret_mode != connection.mode:
        raise ValidationFailed(
            f"this is a {connection.mode}-mode connection and its mode cannot change: its customer links point to "
            f"{connection.mode}-mode Stripe customers. Delete it and create a new connection instead",
            {"fields": {"secret_key": f"must be a {connection.mode}-mode key"}},
        )
    publishable_key = data.publishable_key or connection.publishable_key
    _check_same_mode(secret_mode, key_mode(publishable_key))
    return secret_key, publishable_key


def _update_keys(connection: StripeConnection, box: SecretBox, data: ConnectionUpdate) -> bool:
    if data.secret_key is None and data.publishable_key is None:
        return False
    secret_key, publishable_key = _checked_keys(connection, data)
    changed = publishable_key != connection.publishable_key
    connection.publishable_key = publishable_key
    if secret_key is not None and secret_key != secrets.secret_key(box, connection):
        connection.secret_key_encrypted = box.encrypt(secret_key)
        connection.secret_key_last4 = secret_key[-4:]
        # Unknown until Stripe is asked again: the new key may belong to another account.
        connection.stripe_account_id = None
        changed = True
    return changed


def _update_webhook_secrets(connection: StripeConnection, box: SecretBox, data: ConnectionUpdate) -> bool:
    given = data.model_fields_set
    current = list(connection.webhook_secrets_encrypted)
    if "webhook_secret" in given:
        replaced = [box.encrypt(data.webhook_secret.get_secret_value())] if data.webhook_secret else []
        connection.webhook_secrets_encrypted = replaced
        return True
    if data.add_webhook_secret is not None:
        new_secret = data.add_webhook_secret.get_secret_value()
        if new_secret in secrets.webhook_secrets(box, connection):
            return False
        if len(current) >= MAX_WEBHOOK_SECRETS:
            raise ValidationFailed(
                f"a connection keeps at most {MAX_WEBHOOK_SECRETS} webhook secrets: "
                "remove the old ones first (remove_old_webhook_secrets: true)",
                {"fields": {"add_webhook_secret": "too many webhook secrets"}},
            )
        connection.webhook_secrets_encrypted = [box.encrypt(new_secret), *current]
        return True
    if data.remove_old_webhook_secrets and len(current) > 1:
        connection.webhook_secrets_encrypted = current[:1]
        return True
    return False


def update_connection(
    connection: StripeConnection, box: SecretBox, data: ConnectionUpdate, verified: Verified | None
) -> None:
    """Apply the fields present in `data`. `verified` is Stripe's answer for the key the connection ends up with."""
    _check_update(data)
    changed = _update_keys(connection, box, data)
    if data.name is not None and data.name != connection.name:
        connection.name = data.name
        changed = True
    if data.settings is not None:
        merged = {**connection.settings, **data.settings.model_dump(exclude_unset=True)}
        if merged != connection.settings:
            connection.settings = merged
            changed = True
    if data.status is not None and data.status != connection.status:
        connection.status = data.status
        changed = True
    changed = _update_webhook_secrets(connection, box, data) or changed
    if verified is not None and verified.account_id not in (None, connection.stripe_account_id):
        connection.stripe_account_id = verified.account_id
        changed = True
    if changed:
        connection.updated_at = utcnow()


def delete_connection(connection: StripeConnection) -> None:
    """Soft delete: the row stays for the history of its events and jobs, but its secrets are wiped at once."""
    now = utcnow()
    connection.status = "deleted"
    connection.deleted_at = now
    connection.updated_at = now
    connection.secret_key_encrypted = ""
    connection.webhook_secrets_encrypted = []


@dataclass(frozen=True, slots=True)
class RotationReport:
    connections: int
    rotated: int
    already_current: int


async def rotate_encryption_keys(session: AsyncSession, box: SecretBox) -> RotationReport:
    """Re-encrypt every stored secret under the newest encryption key. All or nothing: one transaction."""
    connections = await repository.all_for_update(session)
    rotated = current = 0
    for connection in connections:
        try:
            counts = secrets.rotate(box, connection)
        except ValueError:
            raise ValidationFailed(
                f"connection {connection.id} holds a secret that none of FLEXSYNC_ENCRYPTION_KEYS decrypts: "
                "list the new key first and keep the old key(s) after it until rotation has run; nothing was changed"
            ) from None
        rotated += counts[0]
        current += counts[1]
    await session.flush()
    return RotationReport(connections=len(connections), rotated=rotated, already_current=current)
