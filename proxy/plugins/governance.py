"""Governance around dispatch: what a caller may use, and what it may spend.

As a request begins, one of its virtual key's slots is taken
(``proxy.max_in_flight_per_key``). Before anything is sent: the caller may
use every route it could be sent to, its upload is no longer than
``proxy.max_audio_seconds``, and the length it declares is reserved against
its limits and budgets at the dearest route's price (README, "Security").
As the audio proves longer, more is reserved before it is sent on; when the
request is over, the reservations are settled to the audio it used, at the
price of the route that served it.
"""

from __future__ import annotations

import contextlib
import math

from ..audio.sources import LiveAudio
from ..governance.allowance import AudioAllowance, audio_too_long, upload_seconds
from ..governance.concurrency import KeySlots
from ..governance.governor import Admission, Governor
from ..governance.metering import audio_used
from ..metrics import Metrics
from ..models import RequestFacts
from .base import Answer, EarlyAnswer, RequestHooks


class GovernancePlugin:
    """Permissions, per-key slots, limits and budgets for every transcription."""

    def __init__(
        self, governor: Governor, slots: KeySlots, metrics: Metrics, *, max_audio_seconds: float
    ) -> None:
        self._governor = governor
        self._slots = slots
        self._metrics = metrics
        self._max_audio_seconds = max_audio_seconds

    def start(self, facts: RequestFacts, early: EarlyAnswer) -> RequestHooks:
        """Take one of the caller's slots for the request (429 when they are all held)."""
        assert facts.caller is not None, "governance starts once the caller is known"
        slot = contextlib.ExitStack()
        slot.enter_context(self._slots.hold(facts.caller))
        return _Governed(self._governor, self._metrics, self._max_audio_seconds, slot)


class _Governed(RequestHooks):
    """One request's governance: its slot, its admission, its allowance."""

    def __init__(
        self,
        governor: Governor,
        metrics: Metrics,
        max_audio_seconds: float,
        slot: contextlib.ExitStack,
    ) -> None:
        self._governor = governor
        self._metrics = metrics
        self._max_audio_seconds = max_audio_seconds
        self._slot = slot
        self._admission: Admission | None = None
        self._allowance: AudioAllowance | None = None
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
        governor.check_routes(caller, facts.routes)
        seconds = await upload_seconds(form.audio, length, facts.declared_bytes)
        if seconds is not None and seconds > self._max_audio_seconds:
            raise audio_too_long(self._max_audio_seconds)
        self._reserved_s = max(governor.reserve_step_s, seconds or 0.0)
        self._admission = await governor.admit(caller, facts.routes, reserve_s=self._reserved_s)
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

    async def on_audio(self, seconds: float) -> None:
        """Reserve the audio before it is sent on, or refuse it."""
        if self._allowance is not None:
            await self._allowance.cover(seconds)

    async def after(self, facts: RequestFacts) -> None:
        """Settle the reservations to the audio used, and give the slot back."""
        try:
            admission = self._admission
            if admission is None:
                return
            reserved = admission.reserved_seconds
            used = audio_used(facts, reserved if math.isfinite(reserved) else self._reserved_s)
            if used.source != "none":
                self._metrics.metered(used.source, used.seconds)
            await self._governor.settle(admission, used.seconds, used.tokens, served=facts.route)
        finally:
            self._slot.close()
