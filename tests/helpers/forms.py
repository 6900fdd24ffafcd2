"""Multipart bodies for the form reader's tests: hand-fed streams, generated forms, breakages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from hypothesis import strategies as st


class _Connected(BaseProtocol):
    """A protocol that always has its peer: these streams are fed by hand."""

    @property
    def connected(self) -> bool:
        return True


def new_stream() -> StreamReader:
    loop = asyncio.get_running_loop()
    return StreamReader(_Connected(loop), 2**16, loop=loop)


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_[]", min_size=1, max_size=12)


#: Bytes that look like framing: a file may hold any of them.
_TRICKY = st.sampled_from([b"\r\n", b"--", b"\r\n--", b"\r\n\r\n", b"-", b"\r", b"\n"])


@dataclass(frozen=True)
class Form:
    boundary: str
    fields: list[tuple[str, str]]
    file: bytes
    file_first: bool

    def body(self) -> bytes:
        parts = [
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
            for name, value in self.fields
        ]
        file_part = (
            (
                f"--{self.boundary}\r\n"
                'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                "Content-Type: audio/wav\r\n\r\n"
            ).encode()
            + self.file
            + b"\r\n"
        )
        ordered = [file_part, *parts] if self.file_first else [*parts, file_part]
        return b"".join(ordered) + f"--{self.boundary}--\r\n".encode()


@st.composite
def forms(draw: st.DrawFn) -> Form:
    boundary = draw(
        st.text(
            alphabet="abcdefghijklmnopqrstuvwxyz0123456789'()+_,-./:=?", min_size=1, max_size=40
        )
    )
    extra = draw(
        st.lists(
            st.tuples(
                _TOKEN.filter(lambda n: n not in {"model", "file", "stream", "fallbacks"}),
                st.text(alphabet="abcdefghij ", max_size=20),
            ),
            max_size=3,
            unique_by=lambda f: f[0],
        )
    )
    pieces = draw(st.lists(st.one_of(st.binary(max_size=64), _TRICKY), max_size=40))
    # Boundary look-alikes that are not the boundary: a prefix, or one char off.
    near = (f"\r\n--{boundary[:-1]}" + ("x" if boundary[-1] != "x" else "y")).encode()
    file = b"".join(pieces) + (near if draw(st.booleans()) else b"")
    fields = [("model", "whisper-1"), *(("x_" + n, v) for n, v in extra)]
    return Form(boundary, fields, file, draw(st.booleans()))


#: Ways to break a valid body's framing.
BREAKS: dict[str, Callable[[bytes, str], bytes]] = {
    "no final boundary": lambda body, b: body[: body.rindex(f"--{b}--".encode())],
    "cut mid-part": lambda body, b: body[: len(body) * 2 // 3],
    "part header with no colon": lambda body, b: body.replace(
        b'name="model"\r\n', b'name="model"\r\nthis is no header\r\n', 1
    ),
    "boundary never seen": lambda body, b: body.replace(f"--{b}".encode(), b"--other", 1).replace(
        f"--{b}".encode(), b"--other"
    ),
}
