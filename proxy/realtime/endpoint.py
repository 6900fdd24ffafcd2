"""``GET /v1/realtime?intent=transcription``: the upgrade to a realtime session.

Everything that can refuse the session does so before the upgrade, as an
HTTP error in the usual shape (never a 101 followed by a close): a missing
or refused credential (401/403), a model the caller may not use (403), a
spent limit or budget (429/402), a virtual key that already holds
``max_sessions_per_key`` sessions (429), so that one tenant cannot take
every session the server has. Credentials are read as for any request,
plus the two ways a browser can send one on a WebSocket: the subprotocol
``openai-insecure-api-key.<key>`` (OpenAI's) and an ``api-key`` query
parameter (Azure's).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from http import HTTPStatus
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from ..answers.responses import json_response
from ..app_state import (
    AUTH_KEY,
    CONFIG_KEY,
    DISPATCHER_KEY,
    FACTS_KEY,
    GOVERNOR_KEY,
    METRICS_KEY,
    PIPELINE_KEY,
    ROUTER_KEY,
    SECRETS_KEY,
    STATE_KEY,
)
from ..errors import InvalidRequestError, ProxyError, ServiceUnavailableError
from ..form.body import client_gone
from ..form.json_body import read_json_object
from ..governance.credentials import CLIENT_SECRET_PREFIX, Caller, credential_of
from ..providers.base import RealtimeRelayProvider, relays_realtime
from ..providers.redaction import Redactor
from ..router import Route, Router
from .client_events import ClientEventError
from .client_secrets import Redeemed
from .live_seat import SessionSeat
from .relayed import RelayedSession
from .services import SessionServices
from .session import RealtimeSession
from .session_config import DEFAULT_MODEL, SessionConfig
from .session_meter import SessionMeter
from .synthesized import SynthesizedSession
from .turn_request import TurnRequest
from .websocket import ClientSocket

#: Where OpenAI's and Azure's clients open a session.
AZURE_PATH = "/openai/realtime"
REALTIME_PATHS = ("/v1/realtime", "/openai/v1/realtime", AZURE_PATH)
#: Subprotocols answered when offered (a browser fails the handshake otherwise).
SUBPROTOCOLS = ("realtime", "openai-beta.realtime-v1")
#: A browser's credential, as a subprotocol.
KEY_SUBPROTOCOL = "openai-insecure-api-key."
#: The largest client event taken (a few seconds of audio per append is plenty).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
HEARTBEAT_S = 30.0
#: Where a browser's page asks for a client secret.
CLIENT_SECRET_PATHS = ("/v1/realtime/client_secrets", "/openai/v1/realtime/client_secrets")
MAX_SECRET_REQUEST_BYTES = 64 * 1024


async def realtime_session(request: web.Request) -> web.StreamResponse:
    """Upgrade to a realtime transcription session, once the caller may have one."""
    app = request.app
    facts = request[FACTS_KEY]
    facts.request_type = "realtime"
    facts.kind = "realtime.session"
    intent = request.query.get("intent", "transcription")
    if intent != "transcription":
        raise InvalidRequestError(
            f"intent={intent} is not served: this gateway serves transcription sessions "
            "(intent=transcription)",
            param="intent",
        )
    ws = web.WebSocketResponse(
        protocols=SUBPROTOCOLS, heartbeat=HEARTBEAT_S, max_msg_size=MAX_MESSAGE_BYTES
    )
    if not ws.can_prepare(request).ok:
        raise InvalidRequestError(
            "this endpoint is a WebSocket: connect with an Upgrade: websocket request",
            code="websocket_required",
        )
    if app[STATE_KEY].draining:
        # A session lasts minutes, longer than the drain: it belongs on a replica
        # that is staying. (A balancer reaches here on a kept-alive connection
        # after the listening socket has closed; nginx passes a 503 GET on.)
        raise ServiceUnavailableError(
            "this server is restarting; connect again",
            code="server_restarting",
            headers={"Retry-After": "0"},
        )
    settings = app[CONFIG_KEY].proxy.realtime
    if len(app[STATE_KEY].sessions) >= settings.max_sessions:
        raise ServiceUnavailableError(
            "too many realtime sessions open; try again shortly",
            code="overloaded",
            headers={"Retry-After": "1"},
        )
    caller, redeemed = await _identify(request)
    await _open_session(request, ws, caller, redeemed)
    return ws


async def _identify(request: web.Request) -> tuple[Caller, Redeemed | None]:
    """Who the session is for, and the client secret it is opened with, if it is."""
    headers = credentials(request)
    found = credential_of(headers)
    if found is not None and found[1].startswith(CLIENT_SECRET_PREFIX):
        redeemed = await request.app[SECRETS_KEY].redeem(found[1])
        return redeemed.caller, redeemed
    return request.app[AUTH_KEY].identify(headers), None


async def _open_session(
    request: web.Request, ws: web.WebSocketResponse, caller: Caller, redeemed: Redeemed | None
) -> None:
    """Admit the session (through the hooks around dispatch: governance admits it as one
    request), upgrade, and serve it until it ends."""
    app = request.app
    facts = request[FACTS_KEY]
    minted = redeemed.session if redeemed is not None else None
    expires_at = redeemed.expires_at if redeemed is not None else None
    initial = _initial_config(minted)
    # Azure's preview form names a deployment: it goes to the Azure provider,
    # as the deployment routes of the HTTP API do.
    deployment = request.query.get("deployment") if request.path == AZURE_PATH else None
    named = (
        deployment
        or request.query.get("model")
        or (initial.transcription.model if minted else None)
    )
    fallbacks = request.query.getall("fallbacks", [])
    router = app[ROUTER_KEY]
    routes, model = _routes(router, named, fallbacks, azure_deployment=deployment is not None)
    facts.model_requested = model
    facts.routes = routes
    facts.caller = caller = app[AUTH_KEY].on_routes(caller, routes)
    socket = ClientSocket(ws)
    try:
        async with app[PIPELINE_KEY].run(facts) as run:
            await run.before(facts)
            services = SessionServices(
                router=router,
                dispatcher=app[DISPATCHER_KEY],
                governor=app[GOVERNOR_KEY],
                metrics=app[METRICS_KEY],
                settings=app[CONFIG_KEY].proxy.realtime,
                redactor=Redactor.of(app[CONFIG_KEY].providers.values()).with_secret(
                    caller.direct_key
                ),
                pipeline=app[PIPELINE_KEY],
            )
            session = await _session(
                request,
                socket,
                services,
                SessionMeter(run, facts),
                initial=initial,
                model=model,
                fallbacks=fallbacks,
                azure_deployment=deployment is not None,
                expires_at=expires_at,
            )
            await _serve(request, socket, session)
    finally:
        await socket.release()


async def _session(
    request: web.Request,
    socket: ClientSocket,
    services: SessionServices,
    meter: SessionMeter,
    *,
    initial: SessionConfig,
    model: str,
    fallbacks: list[str],
    azure_deployment: bool,
    expires_at: float | None,
) -> RealtimeSession:
    """The session of the kind its provider calls for: relayed to the provider's own
    Realtime API, or synthesized here."""
    facts = request[FACTS_KEY]
    caller = facts.caller
    assert caller is not None
    route = facts.routes[0]
    provider = route.provider
    if relays_realtime(provider):
        return RelayedSession(
            socket,
            await _open_upstream(provider, route, services, caller),
            services,
            caller=caller,
            meter=meter,
            route=route,
            azure_deployment=azure_deployment,
            expires_at=expires_at,
        )
    # A beta client (its subprotocol) is answered in the beta shape from the first event.
    offered = _offered(request)
    beta = "realtime" not in offered and "openai-beta.realtime-v1" in offered
    seat = SessionSeat()
    session = SynthesizedSession(
        socket,
        services,
        caller=caller,
        meter=meter,
        request=TurnRequest(
            facts.routes, replace(initial.transcription, model=model), session=facts
        ),
        config=initial,
        fallbacks=fallbacks,
        azure_deployment=azure_deployment,
        seat=seat,
        dialect="beta" if beta else "ga",
        expires_at=expires_at,
    )
    seat.need(facts.routes)  # refused before the upgrade when the model is full
    return session


def _routes(
    router: Router, named: str | None, fallbacks: list[str], *, azure_deployment: bool
) -> tuple[list[Route], str]:
    """The session's routes, and its model. A session that names no model yet (its
    first ``session.update`` will) starts on ``whisper-1``'s route, or, when that names
    no provider here, the embedded model's or the first provider's."""
    if named is not None:
        return router.plan(named, fallbacks, azure_deployment=azure_deployment), named
    try:
        return router.plan(DEFAULT_MODEL, fallbacks), DEFAULT_MODEL
    except InvalidRequestError:
        providers = router.providers
        provider = providers.get("local") or next(iter(providers.values()))
        return [Route(provider, DEFAULT_MODEL, DEFAULT_MODEL)], DEFAULT_MODEL


async def _open_upstream(
    provider: RealtimeRelayProvider, route: Route, services: SessionServices, caller: Caller
) -> aiohttp.ClientWebSocketResponse:
    """The provider's own session, opened before the client's upgrade (so its refusal
    reaches the client as an HTTP error with its status)."""
    started = time.monotonic()
    upstream = await provider.open_realtime(
        route.model, caller.direct_key, named_deployment=route.named_deployment
    )
    services.metrics.realtime_upstream_connect.observe(time.monotonic() - started)
    return upstream


async def _serve(request: web.Request, socket: ClientSocket, session: RealtimeSession) -> None:
    """Upgrade, and serve the session; a shutdown can drain it meanwhile."""
    state = request.app[STATE_KEY]
    sessions = state.sessions
    facts = request[FACTS_KEY]
    try:
        await socket.accept(request)
        facts.status = HTTPStatus.SWITCHING_PROTOCOLS
        sessions.add(session)
        # A key revoked after the caller was identified, before the session was in the
        # set a revocation ends: nothing awaits between these lines and the add.
        refusal = _revoked(request)
        if refusal is not None:
            await session.revoke(refusal)
        if state.draining:
            # Admitted before the drain began, opened after it had told the others.
            state.drain_session(session)
        await _to_its_end(request, session)
    finally:
        sessions.discard(session)
        await session.aclose()
        facts.close_code = socket.close_code


async def _to_its_end(request: web.Request, session: RealtimeSession) -> None:
    """Serve ``session`` until it ends its own way.

    aiohttp cancels the handler of a connection that is lost (the app runs with
    ``handler_cancellation``, so an upload's upstream request stops with its
    client). For a session that is only its client leaving, which it hears on its
    socket too: it winds down as it would (its turns stopped, its meter and its
    facts settled) instead of being cut off wherever it was. Any other
    cancellation (the server's shutdown) is passed on to it.
    """
    running = asyncio.ensure_future(session.run())
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        if not client_gone(request):
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            raise
        await running
        # The cancellation said the connection was lost, and that has been dealt with.
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()


def _revoked(request: web.Request) -> ProxyError | None:
    """Why the session's virtual key may no longer be used, if it may not."""
    caller = request[FACTS_KEY].caller
    key = caller.virtual_key if caller is not None else None
    if caller is None or key is None:
        return None
    return request.app[AUTH_KEY].keys.refusal(key.id, caller.key_digest)


def _offered(request: web.Request) -> list[str]:
    """The subprotocols the client offered."""
    return [p.strip() for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",")]


def _initial_config(minted: dict[str, Any] | None) -> SessionConfig:
    """The configuration a session starts with: a client secret's, or the defaults."""
    if not minted:
        return SessionConfig()
    try:
        return SessionConfig().updated(minted, "ga")
    except ClientEventError:  # checked when it was minted; the defaults otherwise
        return SessionConfig()


def credentials(request: web.Request) -> CIMultiDict[str]:
    """The request's headers, with a browser's credential (subprotocol or query) added
    where no header carries one."""
    headers = CIMultiDict(request.headers)
    offered = [p.strip() for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",")]
    key = next((p[len(KEY_SUBPROTOCOL) :] for p in offered if p.startswith(KEY_SUBPROTOCOL)), "")
    if key and hdrs.AUTHORIZATION not in headers:
        headers[hdrs.AUTHORIZATION] = f"Bearer {key}"
    query_key = request.query.get("api-key")
    if query_key and "api-key" not in headers:
        headers["api-key"] = query_key
    return headers


async def create_client_secret(request: web.Request) -> web.Response:
    """``POST /v1/realtime/client_secrets``: a secret a browser opens a session with."""
    app = request.app
    request[FACTS_KEY].request_type = "realtime_client_secret"
    caller = app[AUTH_KEY].identify(request.headers)
    body = await _secret_request(request)
    governor = app[GOVERNOR_KEY]

    async def admit(config: SessionConfig) -> None:
        # The secret may do what its key may: a model it may not use is refused now.
        routes = app[ROUTER_KEY].plan(config.transcription.model, ())
        governor.check_routes(caller, routes)
        # A mint is a request: without this, a key could mint without end.
        await governor.count_request(caller)

    return json_response(await app[SECRETS_KEY].mint(caller, body, admit))


async def _secret_request(request: web.Request) -> dict[str, Any]:
    """A mint's JSON body (none: an empty one)."""
    return await read_json_object(request, MAX_SECRET_REQUEST_BYTES, empty={})
