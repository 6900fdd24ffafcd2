"""The bytes per second a relayed session's appended audio is metered at.

The upstream's word decides it (the format its ``session.created`` and each
``session.updated`` say it takes), never the format the client merely
asked for; a format the proxy cannot measure is refused in an update, and
counted at the fewest bytes a second when the upstream names one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from .client_events import ClientEventError
from .session_config import BETA_TO_GA_FORMATS

#: Bytes per second of each input format, as appended (base64 decoded).
_BYTES_PER_S = {"audio/pcm": 48_000, "audio/pcmu": 8_000, "audio/pcma": 8_000}
#: The bytes per second of an upstream's format the proxy cannot measure: the fewest
#: of any format, so its audio is never counted short.
_LOWEST_BYTES_PER_S = min(_BYTES_PER_S.values())


class InputRate:
    """The bytes per second appended audio is metered at.

    The upstream's word decides it: the format of its ``session.created``, then
    of each ``session.updated``. An update forwarded but not answered yet may
    change the format at any moment, so until its answer the rate is the lower
    of the two (more seconds for the same bytes). The upstream answers
    accepted updates once each and in order, so each answer settles the oldest
    update waiting; one it refuses waits until the next answer, and meanwhile
    its format can only make the count higher, never lower.
    """

    def __init__(self) -> None:
        self._confirmed = _BYTES_PER_S["audio/pcm"]
        #: Updates forwarded and not answered, oldest first: the rate each asks for.
        self._waiting: deque[int | None] = deque()

    @property
    def bytes_per_s(self) -> int:
        """The rate for audio appended now."""
        return min([self._confirmed, *(r for r in self._waiting if r is not None)])

    def requested(self, bytes_per_s: int | None) -> None:
        """An update went upstream asking for this rate (None: the format unchanged)."""
        self._waiting.append(bytes_per_s)

    def confirmed(self, bytes_per_s: int | None, *, answers_update: bool) -> None:
        """The upstream said its format (None: it named none), answering an update or not."""
        if answers_update and self._waiting:
            self._waiting.popleft()
        if bytes_per_s is not None:
            self._confirmed = bytes_per_s


def requested_rate(session: dict[str, Any]) -> int | None:
    """The bytes per second of the format an update asks for (None: it names none);
    a format whose audio the proxy cannot count is refused."""
    rates: list[int] = []
    for rate, param in _formats_named(session):
        if rate is None:
            raise ClientEventError(
                "a relayed session takes audio/pcm (24 kHz), audio/pcmu or audio/pcma",
                param=param,
            )
        rates.append(rate)
    return min(rates, default=None)


def confirmed_rate(session: dict[str, Any]) -> int | None:
    """The bytes per second of the format the upstream says it takes (None: it names
    none); one the proxy cannot measure counts at the fewest bytes a second."""
    rates = [_LOWEST_BYTES_PER_S if r is None else r for r, _ in _formats_named(session)]
    return min(rates, default=None)


def decoded_length(encoded: str) -> int:
    """How many bytes a base64 string decodes to, without decoding it."""
    size = len(encoded) * 3 // 4
    return size - encoded[-2:].count("=") if encoded else 0


def _formats_named(session: dict[str, Any]) -> Iterator[tuple[int | None, str]]:
    """The bytes per second of each input format a session object names (GA's
    ``audio.input.format``, beta's ``input_audio_format``), None for a format the
    proxy cannot measure, each with its field's path."""
    audio = session.get("audio")
    inputs = audio.get("input") if isinstance(audio, dict) else None
    if isinstance(inputs, dict) and inputs.get("format") is not None:
        yield _ga_rate(inputs["format"]), "session.audio.input.format"
    beta = session.get("input_audio_format")
    if beta is not None:
        named = BETA_TO_GA_FORMATS.get(beta) if isinstance(beta, str) else None
        yield (_BYTES_PER_S[named] if named else None), "session.input_audio_format"


def _ga_rate(value: object) -> int | None:
    """The bytes per second of a GA format object, None when it is not one measured."""
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if kind != "audio/pcm":
        return _BYTES_PER_S.get(kind) if isinstance(kind, str) else None
    rate = value.get("rate", 24_000)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
        return None
    return max(1, int(rate * 2))
