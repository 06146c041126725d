"""A fault-injecting Stripe stand-in: a proxy in front of localstripe, for what localstripe cannot do.

localstripe ignores Idempotency-Key (a repeated key makes a duplicate customer) and never answers 429, 5xx or
slowly. This proxy forwards every request to localstripe and adds, as Stripe does or might:
- Idempotency replay: the first answer to a key (per API key) is stored, and every later request with that key
  gets the same answer without reaching localstripe; a request reusing a key with other parameters gets
  Stripe's 400 `idempotency_error`; a second request arriving while the first is in flight waits for it.
- Scripted faults, taken in order by the requests they match (method + path regex), each `count` times:
  `status` (answer with that status and a Stripe-shaped error, optionally with headers such as
  Stripe-Should-Retry, without reaching localstripe), `timeout_after_commit` (forward and store the answer,
  then stall `seconds` so the client times out after Stripe has committed), `hold` (forward and store, then
  stall until released: a worker can be killed mid-request), `delay` (stall `seconds`, then forward), `pass`
  (forward as is: lets the first `count` matching requests through before the faults after it).
- Scripted events (catch-up tests, below): `GET /v1/events` answered from a list the test sets, newest first
  as Stripe lists them (localstripe lists oldest first), filtered by `type` and `created`, paged by
  `starting_after`.
- Webhook endpoints (`/v1/webhook_endpoints`, which localstripe lacks), served on top of localstripe's own
  webhook configuration: tests/standin_webhook_endpoints.py.
- Counters: creates that reached localstripe per `metadata[flexprice_customer_id]`, requests per route,
  when each request arrived (seconds since the epoch, per route): what a rate limit is checked against, and
  how many TCP connections the requests came over.

Run: python -m tests.stripe_standin --upstream URL --port PORT. Control API under /_standin/.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import ClientSession, ClientTimeout, web

from tests import standin_webhook_endpoints as webhook_endpoints

CUSTOMER_PATH = re.compile(r"/v1/customers/[^/]+")
KEY_REUSED = "Keys for idempotent requests can only be used with the same parameters they were first used with."


@dataclass
class Fault:
    action: str
    method: str
    path: re.Pattern[str]
    count: int
    status: int = 500
    message: str = "injected fault"
    error_type: str = "api_error"
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Stored:
    fingerprint: str
    status: int
    body: bytes
    content_type: str


@dataclass
class State:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    stored: dict[tuple[str, str], Stored] = field(default_factory=dict)
    in_flight: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    creates: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    # The client addresses (host, port) requests came from: one per TCP connection a client opened.
    peers: set[tuple[str, int]] = field(default_factory=set)
    arrivals: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    replays: int = 0
    injected: int = 0
    held: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    session: ClientSession | None = None
    # Scripted events (see scripted_events); None: /v1/events is forwarded to localstripe.
    events: list[dict[str, Any]] | None = None


def route_of(method: str, path: str) -> str:
    return f"{method} {CUSTOMER_PATH.sub('/v1/customers/{id}', path)}"


def take_fault(state: State, method: str, path: str) -> Fault | None:
    for fault in state.faults:
        if fault.count > 0 and fault.method == method and fault.path.fullmatch(path):
            fault.count -= 1
            return fault
    return None


def error_response(fault: Fault) -> web.Response:
    body = {"error": {"message": fault.message, "type": fault.error_type}}
    return web.json_response(body, status=fault.status, headers=fault.headers)


async def forward(state: State, request: web.Request, body: bytes) -> Stored:
    assert state.session is not None
    # --- Webhook endpoints: served by the stand-in (tests/standin_webhook_endpoints.py), not by localstripe ---
    if webhook_endpoints.PATH.fullmatch(request.path):
        status, answer = await webhook_endpoints.serve(state.session, request.app["webhook_endpoints"], request, body)
        return Stored("", status, json.dumps(answer).encode(), "application/json")
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
    async with state.session.request(
        request.method, state.upstream + request.path_qs, data=body, headers=headers
    ) as upstream:
        content = await upstream.read()
        stored = Stored("", upstream.status, content, upstream.headers.get("content-type", "application/json"))
    if request.method == "POST" and request.path == "/v1/customers" and stored.status == 200:
        fields = dict(parse_qsl(body.decode(), keep_blank_values=True))
        state.creates[fields.get("metadata[flexprice_customer_id]", "")] += 1
    return stored


def as_response(stored: Stored, replayed: bool = False) -> web.Response:
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    response = web.Response(status=stored.status, body=stored.body, headers=headers)
    response.content_type = stored.content_type.split(";")[0]
    return response


async def proxy(request: web.Request) -> web.StreamResponse:
    state: State = request.app["state"]
    body = await request.read()
    route = route_of(request.method, request.path)
    state.requests[route] += 1
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if peer:
        state.peers.add((peer[0], peer[1]))
    state.arrivals[route].append(time.time())
    fault = take_fault(state, request.method, request.path)
    if fault is not None and fault.action == "status":
        state.injected += 1
        return error_response(fault)
    if fault is not None and fault.action == "delay":
        await asyncio.sleep(fault.seconds)
    if state.events is not None and request.method == "GET" and request.path == "/v1/events":
        return scripted_events(state.events, request)
    key = request.headers.get("Idempotency-Key")
    if key is None or request.method not in ("POST", "DELETE"):
        return as_response(await forward(state, request, body))
    slot = (request.headers.get("Authorization", ""), key)
    fingerprint = hashlib.sha256(f"{request.method} {request.path} ".encode() + body).hexdigest()
    lock = state.in_flight.setdefault(slot, asyncio.Lock())
    async with lock:
        stored = state.stored.get(slot)
        if stored is not None:
            if stored.fingerprint != fingerprint:
                message = (
                    "Keys for idempotent requests can only be used with the same parameters they were first used with."
                )
                return error_response(Fault("status", "", re.compile(""), 0, 400, message, "idempotency_error"))
            state.replays += 1
            return as_response(stored, replayed=True)
        stored = await forward(state, request, body)
        stored.fingerprint = fingerprint
        state.stored[slot] = stored
    if fault is not None and fault.action == "timeout_after_commit":
        state.injected += 1
        await asyncio.sleep(fault.seconds)
    elif fault is not None and fault.action == "hold":
        state.injected += 1
        state.held += 1
        await state.release.wait()
    return as_response(stored)


async def set_faults(request: web.Request) -> web.Response:
    state: State = request.app["state"]
    spec = await request.json()
    state.faults = [
        Fault(
            action=item["action"],
            method=item.get("method", "POST"),
            path=re.compile(item.get("path", "/v1/customers")),
            count=int(item.get("count", 1)),
            status=int(item.get("status", 500)),
            message=item.get("message", "injected fault"),
            error_type=item.get("error_type", "api_error"),
            headers=item.get("headers", {}),
            seconds=float(item.get("seconds", 0)),
        )
        for item in spec["faults"]
    ]
    state.release = asyncio.Event()
    return web.json_response({"faults": len(state.faults)})


async def release(request: web.Request) -> web.Response:
    request.app["state"].release.set()
    return web.json_response({"released": True})


async def stats(request: web.Request) -> web.Response:
    state: State = request.app["state"]
    return web.json_response(
        {
            "creates": dict(state.creates),
            "requests": dict(state.requests),
            "connections": len(state.peers),
            "arrivals": dict(state.arrivals),
            "replays": state.replays,
            "injected": state.injected,
            "held": state.held,
        }
    )


async def reset(request: web.Request) -> web.Response:
    state: State = request.app["state"]
    state.release.set()
    request.app["state"] = State(upstream=state.upstream, session=state.session)
    return web.json_response({"reset": True})


async def clear_webhook_endpoints(request: web.Request) -> web.Response:
    session = request.app["state"].session
    return await webhook_endpoints.clear(session, request.app["webhook_endpoints"])


async def disable_webhook_endpoint(request: web.Request) -> web.Response:
    session = request.app["state"].session
    return await webhook_endpoints.disable(session, request.app["webhook_endpoints"], request.match_info["id"])


async def refuse_webhook_endpoint_keys(request: web.Request) -> web.Response:
    keys = (await request.json())["keys"]
    request.app["webhook_endpoints"].keys_without_permission = set(keys)
    return web.json_response({"keys": len(keys)})


# --- Scripted events: GET /v1/events as Stripe answers it, for the catch-up tests ----------------------------------


def scripted_events(events: list[dict[str, Any]], request: web.Request) -> web.Response:
    query = request.query
    chosen = [event for event in events if query.get("type") in (None, event["type"])]
    if "created[gte]" in query:
        chosen = [event for event in chosen if event["created"] >= int(query["created[gte]"])]
    if "created[lte]" in query:
        chosen = [event for event in chosen if event["created"] <= int(query["created[lte]"])]
    # Stripe's order: newest first; events of one second, the later-made first.
    chosen = [event for _position, event in sorted(enumerate(chosen), key=lambda p: (p[1]["created"], p[0]))][::-1]
    if "starting_after" in query:
        ids = [event["id"] for event in chosen]
        chosen = chosen[ids.index(query["starting_after"]) + 1 :]
    limit = int(query.get("limit", 10))
    body = {"object": "list", "url": "/v1/events", "data": chosen[:limit], "has_more": len(chosen) > limit}
    return web.json_response(body)


async def set_events(request: web.Request) -> web.Response:
    state: State = request.app["state"]
    state.events = (await request.json())["events"]
    return web.json_response({"events": None if state.events is None else len(state.events)})


def make_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=2**20)
    app["state"] = State(upstream=upstream.rstrip("/"))

    async def open_session(app: web.Application) -> None:
        app["state"].session = ClientSession(timeout=ClientTimeout(total=60))

    async def close_session(app: web.Application) -> None:
        session = app["state"].session
        if session is not None:
            await session.close()

    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_post("/_standin/faults", set_faults)
    app.router.add_post("/_standin/release", release)
    app.router.add_post("/_standin/reset", reset)
    app.router.add_get("/_standin/stats", stats)
    # --- Webhook endpoints (tests/standin_webhook_endpoints.py) ---
    app["webhook_endpoints"] = webhook_endpoints.Endpoints(upstream=upstream.rstrip("/"))
    app.router.add_post("/_standin/webhook_endpoints/clear", clear_webhook_endpoints)
    app.router.add_post("/_standin/webhook_endpoints/disable/{id}", disable_webhook_endpoint)
    app.router.add_post("/_standin/webhook_endpoints/keys_without_permission", refuse_webhook_endpoint_keys)
    app.router.add_post("/_standin/events", set_events)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # Stopped, it ends at once: a request it holds on purpose (a "delay" fault) is not waited for.
    web.run_app(
        make_app(args.upstream), host="127.0.0.1", port=args.port, print=None, access_log=None, shutdown_timeout=0.1
    )


if __name__ == "__main__":
    main()
