"""The proxy's own audio sources, made for tests: a file arriving in the pieces given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

from proxy.audio.sources import LiveAudio
from proxy.models import FormField


def live_audio(
    *pieces: bytes, trailing: Sequence[FormField] = (), pause: bool = False
) -> LiveAudio:
    """An upload arriving in ``pieces``, as the form reader hands one out (``pause``: the
    event loop runs between pieces, as it does between a client's packets)."""

    async def client() -> AsyncGenerator[bytes, None]:
        for piece in pieces:
            yield piece
            if pause:
                await asyncio.sleep(0)

    return LiveAudio(client(), filename="a.wav", content_type="audio/wav", trailing_fields=trailing)


def in_pieces(data: bytes, size: int) -> list[bytes]:
    """``data`` cut into pieces of ``size`` bytes."""
    return [data[start : start + size] for start in range(0, len(data), size)]
