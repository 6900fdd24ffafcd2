"""What is kept of the uploaded file as it passes: its digest, its counts, its name."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping

from ..audio.duration import DurationReader
from ..errors import InvalidRequestError
from ..metrics import Metrics
from ..models import RequestFacts

DEFAULT_FILENAME = "audio"
DEFAULT_FILE_TYPE = "application/octet-stream"

REPR_DIGEST_HEADER = "Repr-Digest"


def repr_digest_sha256(headers: Mapping[str, str]) -> bytes | None:
    """The file's sha-256 as the client declared it in ``Repr-Digest`` (RFC 9530), if it did.

    The header describes the audio file the form carries (not the multipart
    body around it, whose boundary is the client's random choice). Other
    algorithms are ignored; a malformed sha-256 member is a 400.
    """
    value = headers.get(REPR_DIGEST_HEADER)
    if value is None:
        return None
    for member in value.split(","):
        name, _, rest = member.partition("=")
        if name.strip().lower() != "sha-256":
            continue
        encoded = rest.split(";", 1)[0].strip()
        try:
            if len(encoded) < 2 or encoded[0] != ":" or encoded[-1] != ":":
                raise ValueError(encoded)
            digest = base64.b64decode(encoded[1:-1], validate=True)
        except (ValueError, binascii.Error):
            digest = b""
        if len(digest) != hashlib.sha256().digest_size:
            raise InvalidRequestError(
                f"{REPR_DIGEST_HEADER} must carry sha-256=:<base64 of 32 bytes>:",
                code="invalid_digest",
            )
        return digest
    return None


def sendable_filename(filename: str | None) -> str:
    """The file part's name, as text that can be sent on.

    aiohttp keeps bytes that are not UTF-8 as lone surrogates; they become
    U+FFFD. Quotes and line breaks are escaped when the name is sent upstream.
    """
    name = filename or DEFAULT_FILENAME
    return name.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class FileAccount:
    """What is kept of the file as it passes, however the form is read: its digest
    (checked against the client's), the bytes-in metric, the request's facts."""

    def __init__(
        self,
        metrics: Metrics,
        facts: RequestFacts | None,
        hash_audio: bool,
        expected_sha256: bytes | None,
    ) -> None:
        self._metrics = metrics
        self._facts = facts
        self._expected_sha256 = expected_sha256
        self._hasher = hashlib.sha256() if hash_audio or expected_sha256 is not None else None
        # The length is read from the container as the bytes pass, for metering an
        # answer that does not say it (one that reports tokens, not seconds).
        self._length = DurationReader() if facts is not None else None
        if facts is not None:
            facts.audio_length = self._length

    def took(self, piece: bytes) -> None:
        """A piece of the file has been read."""
        if self._hasher is not None:
            self._hasher.update(piece)
        self._metrics.audio_bytes_in.inc(len(piece))
        if self._length is not None:
            self._length.feed(piece)
        if self._facts is not None:
            self._facts.audio_bytes += len(piece)

    def read_whole(self) -> str | None:
        """The file is read whole: its sha256 in hex (when hashed), checked against the client's."""
        if self._hasher is None:
            return None
        digest = self._hasher.digest()
        if self._expected_sha256 is not None and digest != self._expected_sha256:
            raise InvalidRequestError(
                f"the file's sha-256 does not match the {REPR_DIGEST_HEADER} header",
                code="digest_mismatch",
                param="file",
            )
        return digest.hex()
