"""What the cache keeps: an answer and who gave it, under a key made of what was said.

An entry is keyed on what was said, not on the file's name: the sha256 of
the audio bytes (hashed as they stream through), the route, every field
that changes the answer, and the cache key, all scoped to the caller, so
one tenant never reads another's transcript. ``response_format`` is not in
the key: a stored answer serves every format it can be rendered as.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from ..answers.formats import RESPONSE_FORMATS, render
from ..form.fields import PROXY_ONLY_FIELDS, first_value
from ..governance.credentials import Caller
from ..models import FormField, Task, TranscriptDone
from ..router import Route

#: Fields that do not change what was said: how the answer is framed, where
#: it may come from. Everything else the client sends is part of the key.
_NOT_IN_KEY = frozenset({"model", "response_format", "stream", *PROXY_ONLY_FIELDS})


#: Bumped whenever what a key covers changes, so old entries are not misread.
_KEY_VERSION = "transcript-v1"


@dataclass(frozen=True)
class CachedAnswer:
    """A complete successful answer as stored, and who first gave it."""

    format: str
    done: TranscriptDone
    provider: str
    model: str

    def encode(self) -> bytes:
        """The entry as stored."""
        return orjson.dumps(
            {
                "format": self.format,
                "document": self.done.document,
                "text": self.done.text,
                "provider": self.provider,
                "model": self.model,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer | None:
        """The entry ``raw`` holds, or None when it is not one (then it counts as a miss)."""
        try:
            entry = orjson.loads(raw)
            document, text = entry["document"], entry["text"]
            if not (isinstance(document, dict) or isinstance(text, str)):
                return None
            done = TranscriptDone(
                raw=b"", document=document if isinstance(document, dict) else None, text=text
            )
            return cls(str(entry["format"]), done, str(entry["provider"]), str(entry["model"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None

    def as_format(self, wanted: str) -> TranscriptDone | None:
        """The answer in format ``wanted``, or None when this entry cannot give it."""
        return render(self.done, self.format, wanted)


def cache_scope(caller: Caller) -> str:
    """Whose entries a caller may read: its virtual key's, never another tenant's."""
    if caller.virtual_key is not None:
        return f"vk:{caller.virtual_key.id}"
    if caller.direct_key is not None:
        # The caller's own provider key is its identity; only a digest is kept.
        return "direct:" + hashlib.sha256(caller.direct_key.encode()).hexdigest()
    return caller.kind


def cache_key(
    *,
    scope: str,
    request_key: str,
    route: Route,
    fields: Sequence[FormField],
    audio_sha256: str,
    task: Task = "transcription",
) -> str:
    """The entry's key: everything that decides what the answer says."""
    relevant = sorted(
        (field.name.removesuffix("[]"), field.value)
        for field in fields
        if field.name not in _NOT_IN_KEY
    )
    # A diarized answer is another kind of document: it gets entries of its own.
    response_format = RESPONSE_FORMATS.get(first_value(fields, "response_format") or "json")
    family = "diarized" if response_format is not None and response_format.diarized else "text"
    if task != "transcription":
        # The same audio's translation is another text: it never answers a
        # transcription, nor one a translation.
        family = task
    material = orjson.dumps(
        [
            _KEY_VERSION,
            scope,
            request_key,
            route.provider.name,
            route.model,
            family,
            audio_sha256,
            relevant,
        ]
    )
    return hashlib.sha256(material).hexdigest()
