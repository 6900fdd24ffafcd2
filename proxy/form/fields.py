"""What the transcription form's text fields may hold (README, "API"), and how many."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import orjson

from ..answers.formats import RESPONSE_FORMATS
from ..errors import InvalidRequestError
from ..logs import looks_like_a_credential
from ..models import FormField, Task
from .limits import FormLimits

TIMESTAMP_GRANULARITIES = frozenset({"word", "segment"})

#: Fields that may appear once; a second copy is ambiguous and refused.
SINGULAR_FIELDS = frozenset(
    {"model", "language", "prompt", "response_format", "temperature", "stream"}
)

#: Fields for the proxy only, never sent upstream.
PROXY_ONLY_FIELDS = frozenset({"fallbacks", "fallbacks[]"})

#: Fields a translation does not take: it is always into English (OpenAI refuses
#: ``language`` there too). OpenAI's translations do not stream (some servers'
#: do, but not all alike), so a translation's ``stream`` is the proxy's to answer
#: and is never sent upstream.
_NOT_TRANSLATION_FIELDS = frozenset({"language"})
_NOT_SENT_FOR_TRANSLATION = frozenset({"stream"})

# ISO-639-1 codes are two letters; whisper servers also take a few
# three-letter codes (haw, yue) and some accept a region suffix.
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?")


def validate_field(field: FormField, task: Task = "transcription") -> None:
    """Raise :class:`InvalidRequestError` naming the field when its value is unusable."""
    name, value = field.name, field.value
    if task == "translation":
        _validate_translation_field(field)
    if name == "model":
        if not value.strip():
            raise InvalidRequestError("model must not be empty", param=name)
        if looks_like_a_credential(value):
            # Never echoed back, logged or sent to a provider as a model name.
            raise InvalidRequestError(
                "model looks like an API key or token; send credentials in a header",
                code="credential_in_model",
                param=name,
            )
    elif name == "response_format":
        if value not in RESPONSE_FORMATS:
            choices = ", ".join(sorted(RESPONSE_FORMATS))
            raise InvalidRequestError(
                f"response_format must be one of {choices}; got {value!r}", param=name
            )
    elif name == "temperature":
        parse_temperature(value)
    elif name == "stream":
        parse_stream(value)
    elif name == "language":
        if not _LANGUAGE.fullmatch(value):
            raise InvalidRequestError(
                f"language must be an ISO-639-1 code such as 'en'; got {value!r}", param=name
            )
    elif name in PROXY_ONLY_FIELDS:
        parse_fallbacks(field)
    elif (
        name in ("timestamp_granularities[]", "timestamp_granularities")
        and value not in TIMESTAMP_GRANULARITIES
    ):
        raise InvalidRequestError(
            f"{name} values must be 'word' or 'segment'; got {value!r}", param=name
        )


def _validate_translation_field(field: FormField) -> None:
    if field.name in _NOT_TRANSLATION_FIELDS:
        raise InvalidRequestError(
            f"{field.name} is not a translation field: a translation is always into English "
            "and its source language is detected",
            code="unsupported_field",
            param=field.name,
        )
    if (
        field.name == "response_format"
        and (found := RESPONSE_FORMATS.get(field.value))
        and found.diarized
    ):
        raise InvalidRequestError(
            f"response_format {field.value} is for transcriptions; a translation is "
            "json, text, srt, verbose_json or vtt",
            param=field.name,
        )


def parse_temperature(value: str) -> float:
    """The temperature as a number in 0..1."""
    try:
        temperature = float(value)
    except ValueError:
        temperature = math.nan
    if not 0.0 <= temperature <= 1.0:  # also false for NaN
        raise InvalidRequestError(
            f"temperature must be a number between 0 and 1; got {value!r}", param="temperature"
        )
    return temperature


def parse_stream(value: str) -> bool:
    """``true`` or ``false``, in any case."""
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise InvalidRequestError(f"stream must be true or false; got {value!r}", param="stream")
    return lowered == "true"


def first_value(fields: Sequence[FormField], name: str) -> str | None:
    """The value of the first field called ``name``, if any."""
    return next((f.value for f in fields if f.name == name), None)


def forwarded(fields: Sequence[FormField], task: Task = "transcription") -> list[FormField]:
    """The fields passed upstream as sent: all but ``model`` and the proxy's own."""
    withheld = PROXY_ONLY_FIELDS
    if task == "translation":
        withheld = withheld | _NOT_SENT_FOR_TRANSLATION
    return [f for f in fields if f.name != "model" and f.name not in withheld]


def parse_fallbacks(field: FormField) -> list[str]:
    """A ``fallbacks`` field's ``provider/model`` values: one, or a JSON array of them."""
    value = field.value.strip()
    if not value.startswith("["):
        return [value] if value else []
    try:
        values = orjson.loads(value)
    except orjson.JSONDecodeError:
        values = None
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise InvalidRequestError(
            f"{field.name} must be provider/model values or a JSON array of them; got {value!r}",
            param="fallbacks",
        )
    return values


def fallbacks_of(fields: Sequence[FormField]) -> list[str]:
    """Every fallback the client asked for, in order."""
    return [v for f in fields if f.name in PROXY_ONLY_FIELDS for v in parse_fallbacks(f)]


class FieldChecks:
    """The rules a form's text fields keep, however the form is read: how many there
    are, how large each is, that each is text, that a singular one comes once."""

    def __init__(self, limits: FormLimits, task: Task = "transcription") -> None:
        self._limits = limits
        self._task = task
        self._count = 0
        self._singular_seen: set[str] = set()

    def count(self, name: str) -> None:
        """One more field, named ``name``: refused past the limit."""
        self._count += 1
        if self._count > self._limits.max_fields:
            raise InvalidRequestError(
                f"too many form fields (at most {self._limits.max_fields})",
                code="too_many_fields",
                param=name,
            )

    def size(self, name: str, size: int) -> None:
        """``size`` bytes of the field have been read: refused past the limit."""
        if size > self._limits.max_field_bytes:
            raise InvalidRequestError(
                f"field {name} is larger than {self._limits.max_field_bytes} bytes",
                code="field_too_large",
                param=name,
            )

    def field(
        self, name: str, data: bytes | bytearray, charset: str, content_type: str | None
    ) -> FormField:
        """A field read whole: its text, checked."""
        try:
            value = data.decode(charset)
        except (UnicodeError, LookupError):  # a charset's name that is not text, too
            raise InvalidRequestError(f"field {name} is not valid text", param=name) from None
        if name in SINGULAR_FIELDS:
            if name in self._singular_seen:
                raise InvalidRequestError(f"field {name} was sent more than once", param=name)
            self._singular_seen.add(name)
        result = FormField(name, value, content_type)
        validate_field(result, self._task)
        return result
