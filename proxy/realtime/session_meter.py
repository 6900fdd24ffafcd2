"""A session's audio seconds, told to the hooks around it as they are appended.

A session is admitted as one request with a block of audio seconds
reserved (governance, :mod:`proxy.plugins.governance`); as its appended
audio reaches what is reserved, the next block is reserved, and a limit or
budget that is spent ends the session (an ``error`` event, close 1008).
When it ends, the reservations are settled to the audio it really appended
(``facts.audio_seconds_in``, which this meter keeps).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ProxyError
from ..models import RequestFacts
from ..plugins.base import PipelineRun
from ..router import Route


class SessionMeter:
    """Counts one session's audio seconds, each append allowed by the session's hooks first."""

    def __init__(self, run: PipelineRun, facts: RequestFacts) -> None:
        self._run = run
        self._facts = facts

    @property
    def seconds(self) -> float:
        """Seconds of audio the client has appended."""
        return self._facts.audio_seconds_in

    async def add(self, seconds: float, size: int) -> ProxyError | None:
        """Count ``seconds`` more, sent as ``size`` bytes of audio; when a limit or budget
        is spent, the error the client is told instead (and the refused audio is not
        counted)."""
        facts = self._facts
        total = facts.audio_seconds_in + seconds
        try:
            await self._run.on_audio(total)
        except ProxyError as exc:
            return exc
        facts.audio_seconds_in = total
        facts.audio_bytes += size
        return None

    async def reroute(self, routes: Sequence[Route]) -> None:
        """The session's model changes to ``routes``' (its audio from now on charged at their
        rates), unless the hooks refuse it (then the session stays as it was)."""
        facts = self._facts
        before, facts.routes = facts.routes, routes
        try:
            await self._run.on_routes(facts)
        except ProxyError:
            facts.routes = before
            raise
        facts.model_requested = routes[0].requested


def spent(exc: ProxyError) -> str:
    """The close frame's reason when ``exc`` ends a session (at most 123 bytes)."""
    return exc.message.encode()[:120].decode(errors="ignore")
