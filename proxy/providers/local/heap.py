"""Giving freed memory back to the system once the model is idle (glibc only).

A long decode frees its buffers as it goes, but glibc keeps freed memory
in the arena of the thread that freed it, and gives each new thread (the
decoder's, the model's) an arena of its own, up to eight per core: RSS 10 s
after a 20-minute request stayed 76 MiB above where it started. Capping
the arenas at two and calling ``malloc_trim(0)`` once no decode is running
brought that to 5 MiB (scripts/bench_local.py). Elsewhere (musl, macOS)
there is nothing to call, and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

#: glibc's mallopt parameter for the most arenas.
_M_ARENA_MAX = -8
#: Arenas once capped: one for the event loop's thread, one shared by the rest.
ARENAS = 2


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def cap_arenas(arenas: int = ARENAS) -> bool:
    """Give threads made from now on at most ``arenas`` malloc arenas between them."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, arenas))


def trim_heap() -> bool:
    """Return free heap pages to the system; whether there was a way to."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
