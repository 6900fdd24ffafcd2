"""Governance around dispatch: what a caller may use, and what it may spend.

As a request begins, one of its virtual key's slots is taken
(``proxy.max_in_flight_per_key``, or ``proxy.realtime.max_sessions_per_key``
for a realtime session). Before anything is sent: the caller may use every
route it could be sent to, an upload is no longer than
``proxy.max_audio_seconds``, and the length it declares is reserved against
its limits and budgets at the dearest route's price (README, "Security"); a
session reserves a block of audio seconds. As the audio proves longer (or a
session's is appended), more is reserved before it is sent on; when the
request is over, the reservations are settled to the audio it used, at the
price of the route that served it. A session's turns are not governed on
their own: their audio is the session's, metered as it came. An async job is
admitted and reserved for at its submit, and that reservation is kept with the
job (:mod:`proxy.governance.held`): its run settles it rather than reserving again.
"""

from __future__ import annotations

import abc
import contextlib
import math

from ..audio.sources import LiveAudio
from ..governance.allowance import AudioAllowance, audio_too_long, upload_seconds
from ..governance.concurrency import KeySlots
from ..governance.governor import Admission, Governor
from ..governance.held import held_record, resumed
from ..governance.metering import AudioUsed, audio_used
from ..metrics import Metrics
from ..models import RequestFacts, RequestKind
from .base import Answer, EarlyAnswer, RequestHooks

#: An async job's submit (admitted and reserved for, the reservation kept with the job) and
#: its run (which settles that reservation, in ``facts.reservation``, rather than
#: making one).
_JOB_SUBMITS: frozenset[RequestKind] = frozenset(
    {"async.transcription.submit", "async.translation.submit"}
)


class GovernancePlugin:
    """Permissions, per-key slots, limits and budgets for every transcription."""

    def __init__(
        self,
        governor: Governor,
        metrics: Metrics,
        *,
        request_slots: KeySlots,
        session_slots: KeySlots,
        max_audio_seconds: float,
        session_step_s: float,
    ) -> None:
        self._governor = governor
        self._metrics = metrics
        self._request_slots = request_slots
        self._session_slots = session_slots
        self._max_audio_seconds = max_audio_seconds
        self._session_step_s = session_step_s

    def start(self, facts: RequestFacts, early: EarlyAnswer) -> RequestHooks | None:
        """Take one of the caller's slots for the request (429 when they are all held)."""
        if facts.kind == "realtime.turn":
            return None
        assert facts.caller is not None, "governance starts once the caller is known"
        slot = contextlib.ExitStack()
        if facts.kind == "realtime.session":
            slot.enter_context(self._session_slots.hold(facts.caller))
            return _GovernedSession(self._governor, slot, step_s=self._session_step_s)
        slot.enter_context(self._request_slots.hold(facts.caller))
        return _GovernedUpload(self._governor, self._metrics, self._max_audio_seconds, slot)


class _Governed(RequestHooks, abc.ABC):
    """One request's governance: its slot, its admission, the allowance it is metered by."""

    def __init__(self, governor: Governor, slot: contextlib.ExitStack) -> None:
        self._governor = governor
        self._slot = slot
        self._admission: Admission | None = None
        self._allowance: AudioAllowance | None = None

    async def on_audio(self, seconds: float) -> None:
        """Reserve the audio before it is sent on, or refuse it."""
        if self._allowance is not None:
            await self._allowance.cover(seconds)

    async def after(self, facts: RequestFacts) -> None:
        """Settle the reservations (unless an async job now holds them, for its run to
        settle), and give the slot back."""
        try:
            if self._admission is not None and not facts.reservation_kept:
                await self._settle(self._admission, facts)
        finally:
            self._slot.close()

    @abc.abstractmethod
    async def _settle(self, admission: Admission, facts: RequestFacts) -> None:
        """Replace the reservations with what the request used."""


class _GovernedSession(_Governed):
    """A realtime session: one request for request limits, its audio as it is appended."""

    def __init__(self, governor: Governor, slot: contextlib.ExitStack, *, step_s: float) -> None:
        super().__init__(governor, slot)
        self._step_s = step_s

    async def before(self, facts: RequestFacts) -> Answer | None:
        """Admit the session (at the upgrade: a refusal is its HTTP error)."""
        caller = facts.caller
        assert caller is not None
        self._governor.check_routes(caller, facts.routes)
        admission = self._admission = await self._governor.admit(caller, facts.routes)
        # A session has no longest: it ends when its limits and budgets are spent.
        self._allowance = AudioAllowance(
            self._governor, admission, max_seconds=math.inf, step_s=self._step_s
        )
        return None

    async def on_routes(self, facts: RequestFacts) -> None:
        """The session's model changed: the caller may use it (403), and its audio from now
        on is charged at its rates (refused, with no change, when they cannot be reserved)."""
        assert facts.caller is not None
        self._governor.check_routes(facts.caller, facts.routes)
        if self._admission is not None:
            await self._governor.rebind(
                self._admission, facts.caller, facts.routes[0], facts.audio_seconds_in
            )

    async def _settle(self, admission: Admission, facts: RequestFacts) -> None:
        seconds = facts.audio_seconds_in
        facts.usage = AudioUsed(seconds, "appended")
        facts.cost = self._governor.cost_of(facts.route, seconds, None)
        await self._governor.settle(admission, seconds)


class _GovernedUpload(_Governed):
    """An upload: its declared length reserved before it is sent, settled on its answer."""

    def __init__(
        self,
        governor: Governor,
        metrics: Metrics,
        max_audio_seconds: float,
        slot: contextlib.ExitStack,
    ) -> None:
        super().__init__(governor, slot)
        self._metrics = metrics
        self._max_audio_seconds = max_audio_seconds
        #: What was reserved before the length was known.
        self._reserved_s = 0.0

    async def before(self, facts: RequestFacts) -> Answer | None:
        """Refuse what the caller may not use or afford, before anything is sent."""
        governor = self._governor
        caller, form, length = facts.caller, facts.form, facts.audio_length
        assert caller is not None
        assert form is not None
        assert form.audio is not None
        assert length is not None, "the form reader measures every upload it reads"
        held = facts.reservation  # set only for an async job's run
        if held is not None:
            # An async job's run: its submit was admitted and reserved for it. Taken up
            # before anything may refuse the run, so that a refusal gives it back.
            self._admission = resumed(caller.virtual_key, held)
        governor.check_routes(caller, facts.routes)
        seconds = await upload_seconds(form.audio, length, facts.declared_bytes)
        if seconds is not None and seconds > self._max_audio_seconds:
            raise audio_too_long(self._max_audio_seconds)
        self._reserved_s = max(governor.reserve_step_s, seconds or 0.0)
        if self._admission is None:
            self._admission = await governor.admit(caller, facts.routes, reserve_s=self._reserved_s)
        if facts.kind in _JOB_SUBMITS:
            facts.reservation = held_record(self._admission)
        self._allowance = AudioAllowance(
            governor,
            self._admission,
            max_seconds=self._max_audio_seconds,
            step_s=governor.reserve_step_s,
        )
        audio = form.audio
        if isinstance(audio, LiveAudio) and audio.size is None and facts.declared_bytes is None:
            self._allowance.guard(audio, length)
        return None

    async def _settle(self, admission: Admission, facts: RequestFacts) -> None:
        reserved = admission.reserved_seconds
        used = audio_used(facts, reserved if math.isfinite(reserved) else self._reserved_s)
        facts.usage = used
        facts.cost = self._governor.cost_of(facts.route, used.seconds, used.tokens)
        if used.source != "none":
            self._metrics.metered(used.source, used.seconds)
        await self._governor.settle(admission, used.seconds, used.tokens, served=facts.route)
