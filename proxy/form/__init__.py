"""The client's multipart form: parsed, checked, its file streamed, spooled or buffered.

:mod:`.parser` splits the body into parts (sans-IO), :mod:`.body` reads it
from the client, :mod:`.fields` and :mod:`.file` say what the fields may
hold and what is kept of the file, :mod:`.reader` puts them together.
"""

from .file import repr_digest_sha256
from .limits import (
    BUFFERED_BODY_BYTES,
    PIECE_BYTES,
    FormLimits,
    check_content_type,
    check_declared_length,
)
from .reader import FormReader, TranscriptionForm

__all__ = [
    "BUFFERED_BODY_BYTES",
    "PIECE_BYTES",
    "FormLimits",
    "FormReader",
    "TranscriptionForm",
    "check_content_type",
    "check_declared_length",
    "repr_digest_sha256",
]
