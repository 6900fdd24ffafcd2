"""A transcription session's configuration: read from ``session.update`` (GA) or
``transcription_session.update`` (beta), and given back in the same dialect.

Only the fields an update names change; ``null`` turns turn detection or
noise reduction off. What the session cannot do is refused with the name of
the field (a :class:`~.client_events.ClientEventError`), and the configuration
stays as it was.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..ids import new_id
from .client_events import ClientEventError
from .protocol import Dialect

AudioFormat = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]

#: The beta API's names for the formats, to the GA API's.
BETA_TO_GA_FORMATS: dict[str, AudioFormat] = {
    "pcm16": "audio/pcm",
    "g711_ulaw": "audio/pcmu",
    "g711_alaw": "audio/pcma",
}
_GA_TO_BETA_FORMATS: dict[AudioFormat, str] = {v: k for k, v in BETA_TO_GA_FORMATS.items()}
#: A language code: ISO-639-1 (or -3), perhaps with a region (en-US).
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})?")
#: The default transcription model when the client names none.
DEFAULT_MODEL = "whisper-1"
#: Models made for realtime sessions whose clients find turns themselves and commit
#: them: with these, turn detection is off unless the client turns it on.
CLIENT_COMMIT_MODELS = frozenset({"gpt-realtime-whisper", "gpt-live-transcribe"})
#: A session lives this long, as OpenAI's do.
SESSION_LIFETIME_S = 3600


@dataclass(frozen=True)
class ServerVad:
    """OpenAI's ``server_vad`` turn detection."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def as_dict(self) -> dict[str, Any]:
        """As the session object gives it."""
        return {
            "type": "server_vad",
            "threshold": self.threshold,
            "prefix_padding_ms": self.prefix_padding_ms,
            "silence_duration_ms": self.silence_duration_ms,
        }


@dataclass(frozen=True)
class Transcription:
    """``audio.input.transcription``: the model and what it is told."""

    model: str = DEFAULT_MODEL
    language: str | None = None
    prompt: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """As the session object gives it."""
        return {"model": self.model, "language": self.language, "prompt": self.prompt or ""}


@dataclass(frozen=True)
class SessionConfig:
    """The session's effective configuration."""

    id: str = field(default_factory=lambda: new_id("sess"))
    expires_at: int = field(default_factory=lambda: int(time.time()) + SESSION_LIFETIME_S)
    format: AudioFormat = "audio/pcm"
    transcription: Transcription = field(default_factory=Transcription)
    turn_detection: ServerVad | None = field(default_factory=ServerVad)
    noise_reduction: dict[str, Any] | None = None
    include: tuple[str, ...] = ()
    #: Whether the client chose the turn detection (else it follows the model).
    turn_detection_chosen: bool = False

    def transcribing(self, transcription: Transcription) -> SessionConfig:
        """This configuration with ``transcription``; turn detection the client has not
        chosen follows its model: off for a model whose clients commit turns themselves
        (LiveKit's and OpenAI's own clients leave it out for those), else ``server_vad``."""
        config = replace(self, transcription=transcription)
        if self.turn_detection_chosen:
            return config
        model = transcription.model.rsplit("/", 1)[-1]
        if model in CLIENT_COMMIT_MODELS:
            return replace(config, turn_detection=None)
        return replace(config, turn_detection=config.turn_detection or ServerVad())

    def as_session(self, dialect: Dialect) -> dict[str, Any]:
        """The session object of ``session.created`` / ``session.updated`` (or the beta
        ``transcription_session.updated``)."""
        turns = self.turn_detection.as_dict() if self.turn_detection is not None else None
        include = list(self.include) or None
        if dialect == "beta":
            return {
                "id": self.id,
                "object": "realtime.transcription_session",
                "expires_at": self.expires_at,
                "input_audio_format": _GA_TO_BETA_FORMATS[self.format],
                "input_audio_transcription": self.transcription.as_dict(),
                "turn_detection": turns,
                "input_audio_noise_reduction": self.noise_reduction,
                "include": include,
                "modalities": ["text"],
            }
        audio_format: dict[str, Any] = {"type": self.format}
        if self.format == "audio/pcm":
            audio_format["rate"] = 24_000
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": self.id,
            "expires_at": self.expires_at,
            "audio": {
                "input": {
                    "format": audio_format,
                    "transcription": self.transcription.as_dict(),
                    "noise_reduction": self.noise_reduction,
                    "turn_detection": turns,
                }
            },
            "include": include,
        }

    def updated(self, session: object, dialect: Dialect) -> SessionConfig:
        """This configuration with an update's ``session`` object applied."""
        if not isinstance(session, dict):
            raise ClientEventError("session must be an object", param="session")
        if dialect == "beta":
            return self._updated_beta(session)
        check_session_type(session)
        audio = _object(session, "audio", "session")
        inputs = _object(audio, "input", "session.audio") if audio is not None else None
        config = self
        if inputs is not None:
            where = "session.audio.input"
            if "format" in inputs:
                config = replace(config, format=_ga_format(inputs["format"], f"{where}.format"))
            config = config._common(
                inputs,
                where,
                transcription="transcription",
                turn_detection="turn_detection",
                noise_reduction="noise_reduction",
            )
        return config._with_include(session)

    def _updated_beta(self, session: dict[str, Any]) -> SessionConfig:
        config = self
        if "input_audio_format" in session:
            value = session["input_audio_format"]
            if value not in BETA_TO_GA_FORMATS:
                raise ClientEventError(
                    f"input_audio_format must be one of {', '.join(BETA_TO_GA_FORMATS)}",
                    param="session.input_audio_format",
                )
            config = replace(config, format=BETA_TO_GA_FORMATS[value])
        config = config._common(
            session,
            "session",
            transcription="input_audio_transcription",
            turn_detection="turn_detection",
            noise_reduction="input_audio_noise_reduction",
        )
        return config._with_include(session)

    def _common(
        self,
        inputs: dict[str, Any],
        where: str,
        *,
        transcription: str,
        turn_detection: str,
        noise_reduction: str,
    ) -> SessionConfig:
        config = self
        if transcription in inputs:
            config = config.transcribing(
                _transcription(
                    inputs[transcription], config.transcription, f"{where}.{transcription}"
                )
            )
        if turn_detection in inputs:
            config = replace(
                config,
                turn_detection=_turn_detection(
                    inputs[turn_detection], config.turn_detection, f"{where}.{turn_detection}"
                ),
                turn_detection_chosen=True,
            )
        if noise_reduction in inputs:
            value = inputs[noise_reduction]
            if value is not None and (
                not isinstance(value, dict)
                or value.get("type") not in (None, "near_field", "far_field")
            ):
                raise ClientEventError(
                    'noise_reduction is null or {"type": "near_field" | "far_field"}',
                    param=f"{where}.{noise_reduction}",
                )
            # Accepted and reported; the audio is passed on as it came.
            config = replace(config, noise_reduction=value)
        return config

    def _with_include(self, session: dict[str, Any]) -> SessionConfig:
        if "include" not in session:
            return self
        include = session["include"]
        if include is None:
            return replace(self, include=())
        if not isinstance(include, list) or not all(isinstance(i, str) for i in include):
            raise ClientEventError("include is a list of strings", param="session.include")
        return replace(self, include=tuple(include))


def check_session_type(session: dict[str, Any]) -> None:
    """Refuse turning the session into another kind than transcription: a conversation
    would answer in tokens and audio the proxy does not meter."""
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise ClientEventError(
            f"this endpoint serves transcription sessions only, not {kind!r}: "
            'send session.type "transcription"',
            param="session.type",
        )


def _object(container: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = container.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ClientEventError(f"{key} must be an object", param=f"{where}.{key}")
    return value


def _ga_format(value: object, param: str) -> AudioFormat:
    if not isinstance(value, dict):
        raise ClientEventError(
            'format is an object: {"type": "audio/pcm", "rate": 24000}', param=param
        )
    kind = value.get("type", "audio/pcm")
    if kind == "audio/pcm":
        rate = value.get("rate", 24_000)
        if rate != 24_000:
            raise ClientEventError(
                f"audio/pcm is taken at 24000 Hz only, not {rate}", param=f"{param}.rate"
            )
        return "audio/pcm"
    if kind == "audio/pcmu":
        return "audio/pcmu"
    if kind == "audio/pcma":
        return "audio/pcma"
    raise ClientEventError(
        "format.type must be audio/pcm, audio/pcmu or audio/pcma", param=f"{param}.type"
    )


def _transcription(value: object, current: Transcription, param: str) -> Transcription:
    if value is None:
        return current  # transcription is what the session is for: it cannot be turned off
    if not isinstance(value, dict):
        raise ClientEventError("transcription must be an object", param=param)
    given: dict[str, str | None] = {}
    for name in ("model", "language", "prompt"):
        if name not in value:
            continue
        item = value[name]
        if item is not None and not isinstance(item, str):
            raise ClientEventError(f"{name} must be a string", param=f"{param}.{name}")
        given[name] = item or None
    model = given.pop("model", current.model)
    if model is None:
        raise ClientEventError("model must name a model", param=f"{param}.model")
    language = given.get("language", current.language)
    if language is not None and not _LANGUAGE.fullmatch(language):
        raise ClientEventError(
            f"language is an ISO-639-1 code such as en or de, not {language!r}",
            param=f"{param}.language",
        )
    return Transcription(
        model=model,
        language=language,
        prompt=given.get("prompt", current.prompt),
    )


def _turn_detection(value: object, current: ServerVad | None, param: str) -> ServerVad | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ClientEventError("turn_detection is null or an object", param=param)
    if value.get("type", "server_vad") != "server_vad":
        raise ClientEventError(
            f"turn_detection type {value.get('type')!r} is not served here: "
            'use {"type": "server_vad"}, or null to commit turns yourself',
            param=f"{param}.type",
        )
    vad = current or ServerVad()
    threshold = value.get("threshold", vad.threshold)
    if (
        not isinstance(threshold, int | float)
        or isinstance(threshold, bool)
        or not (0.0 <= threshold <= 1.0)
    ):
        raise ClientEventError("threshold is a number from 0 to 1", param=f"{param}.threshold")
    durations = {}
    for name, least, most in (("prefix_padding_ms", 0, 5000), ("silence_duration_ms", 100, 10_000)):
        amount = value.get(name, getattr(vad, name))
        if not isinstance(amount, int) or isinstance(amount, bool) or not least <= amount <= most:
            raise ClientEventError(
                f"{name} is a whole number of milliseconds from {least} to {most}",
                param=f"{param}.{name}",
            )
        durations[name] = amount
    return ServerVad(threshold=float(threshold), **durations)
