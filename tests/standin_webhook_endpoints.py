"""Stripe's webhook endpoints API for the stand-in (tests/stripe_standin.py), which localstripe lacks.

`/v1/webhook_endpoints` is served here: create (with a new `whsec_` secret, returned in that answer only),
list (newest first, `limit`, `starting_after`), retrieve, update (`url`, `enabled_events`, `description`,
`metadata`, `disabled`) and delete. Each endpoint is registered with localstripe's own webhook configuration
(`POST /_config/webhooks/<id>`, with its URL, secret and events), so localstripe delivers real signed events with
the secret the client captured. localstripe cannot unregister a webhook: a deleted or disabled endpoint is
registered again at an unreachable URL and for no event type.

Stripe's refusals, as Stripe words them: a 17th endpoint in one mode (its limit is 16), an `http://` URL for a
live-mode key; and, on request (`POST /_standin/webhook_endpoints/keys_without_permission` with a list of keys), a
restricted key without the Webhook Endpoints permission (403; the list replaces the last one, `[]` grants
the permission again). `POST /_standin/webhook_endpoints/disable/<id>`
disables an endpoint as Stripe does after failing deliveries.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import ClientSession, web

PATH = re.compile(r"/v1/webhook_endpoints(?:/(?P<id>[^/]+))?")
LIMIT_PER_MODE = 16
# Nothing listens on the discard port: localstripe's deliveries to a removed endpoint fail at once.
NOWHERE = "http://127.0.0.1:9/removed-webhook-endpoint"


@dataclass
class Endpoints:
    upstream: str
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    keys_without_permission: set[str] = field(default_factory=set)


def _api_key(request: web.Request) -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def _livemode(request: web.Request) -> bool:
    return "_live_" in _api_key(request)


def _error(status: int, message: str, param: str | None = None, error_type: str = "invalid_request_error") -> Any:
    error: dict[str, Any] = {"message": message, "type": error_type}
    if param is not None:
        error["param"] = param
    return status, {"error": error}


def _form(body: bytes) -> dict[str, Any]:
    """Stripe's form encoding: `a[0]=x` lists and `a[k]=v` maps, one level deep (all the endpoint API uses)."""
    fields: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode(), keep_blank_values=True):
        match = re.fullmatch(r"([a-z_]+)\[([^\]]*)\]", key)
        if match is None:
            fields[key] = value
        elif match.group(2).isdigit() or match.group(2) == "":
            fields.setdefault(match.group(1), []).append(value)
        else:
            fields.setdefault(match.group(1), {})[match.group(2)] = value
    return fields


async def _register(session: ClientSession, state: Endpoints, endpoint: dict[str, Any]) -> None:
    live = endpoint["status"] == "enabled"
    body = {
        "url": endpoint["url"] if live else NOWHERE,
        "secret": state.secrets[endpoint["id"]],
        "events": endpoint["enabled_events"] if live else ["none"],
    }
    async with session.post(f"{state.upstream}/_config/webhooks/{endpoint['id']}", json=body) as answer:
        answer.raise_for_status()


def _check_url(request: web.Request, url: Any) -> tuple[int, dict[str, Any]] | None:
    if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        return _error(400, "Invalid URL: must be a valid URL.", "url")  # type: ignore[no-any-return]
    if _livemode(request) and not url.startswith("https://"):
        return _error(  # type: ignore[no-any-return]
            400, "Invalid URL: live mode webhook endpoints must use HTTPS (URL must start with https://).", "url"
        )
    return None


async def serve(session: ClientSession, state: Endpoints, request: web.Request, body: bytes) -> tuple[int, Any]:
    """Answer one `/v1/webhook_endpoints` request: (status, JSON body)."""
    match = PATH.fullmatch(request.path)
    assert match is not None
    if _api_key(request) in state.keys_without_permission:
        key = _api_key(request)
        return _error(
            403,
            f"The provided key '{key[:8]}{'*' * 12}{key[-4:]}' does not have the required permissions for this "
            "endpoint on account 'acct_standin'. Having the 'rak_webhook_write' permission would allow this "
            "request to continue.",
        )
    endpoint_id = match.group("id")
    livemode = _livemode(request)
    fields = _form(body)
    if endpoint_id is None and request.method == "GET":
        mine = [e for e in state.by_id.values() if e["livemode"] == livemode]
        mine.sort(key=lambda e: (e["created"], e["id"]), reverse=True)
        query = dict(request.query)
        if "starting_after" in query:
            ids = [e["id"] for e in mine]
            mine = mine[ids.index(query["starting_after"]) + 1 :] if query["starting_after"] in ids else []
        limit = int(query.get("limit", 10))
        return 200, {
            "object": "list",
            "url": "/v1/webhook_endpoints",
            "has_more": len(mine) > limit,
            "data": mine[:limit],
        }
    if endpoint_id is None and request.method == "POST":
        refused = _check_url(request, fields.get("url"))
        if refused is not None:
            return refused
        if sum(1 for e in state.by_id.values() if e["livemode"] == livemode) >= LIMIT_PER_MODE:
            mode = "live" if livemode else "test"
            return _error(400, f"You have reached the maximum of {LIMIT_PER_MODE} {mode} webhook endpoints.")
        if not fields.get("enabled_events"):
            return _error(400, "Missing required param: enabled_events.", "enabled_events")
        endpoint = {
            "id": f"we_{secrets.token_hex(12)}",
            "object": "webhook_endpoint",
            "api_version": None,
            "application": None,
            "created": int(time.time()),
            "description": fields.get("description"),
            "enabled_events": list(fields["enabled_events"]),
            "livemode": livemode,
            "metadata": fields.get("metadata", {}),
            "status": "enabled",
            "url": fields["url"],
        }
        state.by_id[endpoint["id"]] = endpoint
        state.secrets[endpoint["id"]] = f"whsec_{secrets.token_hex(16)}"
        await _register(session, state, endpoint)
        return 200, {**endpoint, "secret": state.secrets[endpoint["id"]]}
    endpoint = state.by_id.get(endpoint_id or "")
    if endpoint is None or endpoint["livemode"] != livemode:
        return _error(404, f"No such webhook endpoint: '{endpoint_id}'", "id")
    if request.method == "GET":
        return 200, endpoint
    if request.method == "DELETE":
        del state.by_id[endpoint["id"]]
        await _register(session, state, {**endpoint, "status": "deleted"})
        return 200, {"id": endpoint["id"], "object": "webhook_endpoint", "deleted": True}
    if "url" in fields:
        refused = _check_url(request, fields["url"])
        if refused is not None:
            return refused
        endpoint["url"] = fields["url"]
    if "enabled_events" in fields:
        endpoint["enabled_events"] = list(fields["enabled_events"])
    if "description" in fields:
        endpoint["description"] = fields["description"]
    if "metadata" in fields:
        endpoint["metadata"] = {**endpoint["metadata"], **fields["metadata"]}
    if "disabled" in fields:
        endpoint["status"] = "disabled" if fields["disabled"] == "true" else "enabled"
    await _register(session, state, endpoint)
    return 200, endpoint


async def disable(session: ClientSession, state: Endpoints, endpoint_id: str) -> web.Response:
    """What Stripe does to an endpoint whose deliveries keep failing."""
    endpoint = state.by_id[endpoint_id]
    endpoint["status"] = "disabled"
    await _register(session, state, endpoint)
    return web.json_response(endpoint)


async def clear(session: ClientSession, state: Endpoints) -> web.Response:
    """Delete every endpoint (and unregister it from localstripe): a test's leftovers stop receiving events."""
    removed = list(state.by_id.values())
    for endpoint in removed:
        del state.by_id[endpoint["id"]]
        await _register(session, state, {**endpoint, "status": "deleted"})
    state.keys_without_permission.clear()
    return web.json_response({"deleted": len(removed)})
