"""The application's and each request's state, under typed keys."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .answers.streaming import DRAIN_DEADLINE
from .answers.writer import AnswerWriter
from .cache.transcripts import TranscriptCache
from .config import Config
from .dispatch import Dispatcher
from .form import FormLimits
from .governance.concurrency import KeySlots
from .governance.credentials import Authenticator
from .governance.governor import Governor
from .metrics import Metrics
from .models import RequestFacts
from .plugins.base import Pipeline
from .realtime.client_secrets import ClientSecrets
from .realtime.session import RealtimeSession
from .router import Router
from .store.log_queries import LogQueries
from .store.request_log import RequestLog, Subscription


@dataclass
class ServerState:
    """What the app knows of its own load."""

    #: Transcriptions in flight (held to ``max_in_flight``).
    in_flight: int = 0
    #: Every handler running, WebSocket sessions included: a drain ends when it is 0.
    handling: int = 0
    #: Set whenever ``handling`` is 0.
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set once a shutdown has begun: readiness fails, answers close their connections.
    draining: bool = False
    #: When the drain ends (the event loop's clock), once it has begun.
    drain_deadline: float = 0.0
    #: The Redis client replicas share, when one is configured (for readiness).
    redis: Any = None
    #: The tasks relaying streams, so a shutdown can end them properly.
    streams: set[asyncio.Task[Any]] = field(default_factory=set)
    #: Realtime sessions open, so a shutdown can drain them.
    sessions: set[RealtimeSession] = field(default_factory=set)
    #: The tasks draining them.
    drains: set[asyncio.Task[Any]] = field(default_factory=set)
    #: The request log's live tails being followed, so a shutdown can end them.
    tails: set[Subscription] = field(default_factory=set)

    def cut_streams(self) -> None:
        """End the streams still open: each sends an error event and ``[DONE]``."""
        for task in list(self.streams):
            task.cancel(DRAIN_DEADLINE)

    def drain_session(self, session: Any) -> None:
        """Have a realtime ``session`` told to reconnect, and closed by the drain's deadline."""
        remaining = max(0.0, self.drain_deadline - asyncio.get_running_loop().time())
        task = asyncio.ensure_future(session.drain(remaining))
        self.drains.add(task)
        task.add_done_callback(self.drains.discard)


CONFIG_KEY = web.AppKey("config", Config)
AUTH_KEY = web.AppKey("authenticator", Authenticator)
GOVERNOR_KEY = web.AppKey("governor", Governor)
METRICS_KEY = web.AppKey("metrics", Metrics)
STATE_KEY = web.AppKey("state", ServerState)
LIMITS_KEY = web.AppKey("limits", FormLimits)
ROUTER_KEY = web.AppKey("router", Router)
#: How each upload is sent: whole through its routes, or cut when too long.
DISPATCHER_KEY = web.AppKey("dispatcher", Dispatcher)
CACHE_KEY = web.AppKey("transcript_cache", TranscriptCache)
#: Realtime client secrets, kept where replicas share them when Redis is configured.
SECRETS_KEY = web.AppKey("client_secrets", ClientSecrets)
FACTS_KEY = web.RequestKey("facts", RequestFacts)
#: The plugins around dispatch, in their order.
PIPELINE_KEY = web.AppKey("pipeline", Pipeline)
#: Writes each request's answer.
ANSWERS_KEY = web.AppKey("answers", AnswerWriter)
#: The request log's writer and its reads (absent with ``logs.enabled: false``).
REQUEST_LOG_KEY = web.AppKey("request_log", RequestLog)
LOG_QUERIES_KEY = web.AppKey("log_queries", LogQueries)
#: Transcription requests each virtual key has in flight.
REQUEST_SLOTS_KEY = web.AppKey("request_slots", KeySlots)
#: Realtime sessions each virtual key has open (or being opened).
SESSION_SLOTS_KEY = web.AppKey("session_slots", KeySlots)
