"""``GET /v1/realtime?intent=transcription``: the upgrade to a realtime session.

Everything that can refuse the session does so before the upgrade, as an
HTTP error in the usual shape (never a 101 followed by a close): a missing
or refused credential (401/403), a model the caller may not use (403), a
spent limit or budget (429/402). Credentials are read as for any request,
plus the two ways a browser can send one on a WebSocket: the subprotocol
``openai-insecure-api-key.<key>`` (OpenAI's) and an ``api-key`` query
parameter (Azure's).
"""

from __future__ import annotations

from aiohttp import hdrs, web
from multidict import CIMultiDict

from ..app_state import (
    AUTH_KEY,
    CONFIG_KEY,
    DISPATCHER_KEY,
    FACTS_KEY,
    GOVERNOR_KEY,
    METRICS_KEY,
    ROUTER_KEY,
    STATE_KEY,
)
from ..errors import InvalidRequestError
from ..logs import request_id
from .session import RealtimeSession, SessionServices
from .session_config import DEFAULT_MODEL, Transcription
from .transcriber import TurnRoute

#: Where OpenAI's and Azure's clients open a session.
REALTIME_PATHS = ("/v1/realtime", "/openai/v1/realtime", "/openai/realtime")
#: Subprotocols answered when offered (a browser fails the handshake otherwise).
SUBPROTOCOLS = ("realtime", "openai-beta.realtime-v1")
#: A browser's credential, as a subprotocol.
KEY_SUBPROTOCOL = "openai-insecure-api-key."
#: The largest client event taken (a few seconds of audio per append is plenty).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
HEARTBEAT_S = 30.0


async def realtime_session(request: web.Request) -> web.StreamResponse:
    """Upgrade to a realtime transcription session, once the caller may have one."""
    app = request.app
    facts = request[FACTS_KEY]
    facts.request_type = "realtime"
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
    caller = app[AUTH_KEY].identify(credentials(request))
    model = request.query.get("model") or request.query.get("deployment") or DEFAULT_MODEL
    facts.model_requested = model
    fallbacks = request.query.getall("fallbacks", [])
    routes = app[ROUTER_KEY].plan(model, fallbacks)
    facts.provider = routes[0].provider.name
    governor = app[GOVERNOR_KEY]
    governor.check_routes(caller, routes)
    admission = await governor.admit(caller, routes[0])  # a session is one request
    session: RealtimeSession | None = None
    sessions = app[STATE_KEY].sessions
    try:
        await ws.prepare(request)
        session = RealtimeSession(
            ws,
            SessionServices(
                router=app[ROUTER_KEY],
                dispatcher=app[DISPATCHER_KEY],
                governor=governor,
                metrics=app[METRICS_KEY],
                settings=app[CONFIG_KEY].proxy.realtime,
            ),
            caller=caller,
            admission=admission,
            route=TurnRoute(
                routes,
                Transcription(model=model),
                request_id=request_id.get(),
                api_key=caller.direct_key,
            ),
            fallbacks=fallbacks,
        )
        sessions.add(session)
        await session.run()
    finally:
        if session is not None:
            sessions.discard(session)
        await governor.settle(admission, session.audio_seconds if session else 0.0)
        if not ws.closed and ws.prepared:
            await ws.close()
    return ws


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
