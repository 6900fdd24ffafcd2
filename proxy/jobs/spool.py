"""The job spool: each job's upload in a file of its own, named by the job, durable.

An upload is written to an unnamed file in the spool directory (the audio
spool's :class:`~proxy.audio.spool.Spool`: writes off the event loop, nothing
in memory), synced to disk as it goes, and given its name only once it is
whole and synced (``linkat`` of the open file). A client that leaves
mid-upload, a spool that fills, a process killed mid-write: none leaves a
partial file behind, because there never was a name to leave. A named file is
complete, so a replica that restarts (or another replica, when the directory
is a shared volume) can run the job from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, TypeVar

from prometheus_client import Counter

from ..audio.spool import Spool
from ..errors import InsufficientStorageError, ServiceUnavailableError

log = logging.getLogger(__name__)

#: The file's pages are synced every this many bytes: a 2-hour upload's last sync
#: (before the 202) then has little left to write, and the kernel never holds
#: hundreds of MB of it dirty.
SYNC_BYTES = 4 * 1024 * 1024

#: A spool file's name: the job's id and this.
SUFFIX = ".audio"

#: Errors that mean the disk (or the quota, or the file size limit) is full.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

_T = TypeVar("_T")


class JobSpool:
    """Where uploads wait for their jobs: ``directory``, holding at most ``max_bytes``
    (0: as much as the disk takes)."""

    def __init__(self, directory: str, max_bytes: int, written: Counter | None = None) -> None:
        self.directory = directory
        self._max_bytes = max_bytes
        self._written = written
        #: Bytes of this process's uploads being written now (unnamed: not on the
        #: directory's listing), and of those it has named since it started: what the
        #: cap counts besides the listing taken as an upload begins, so that uploads
        #: that overlap cannot each take the same room.
        self._writing = 0
        self._named = 0

    def path_of(self, job_id: str) -> str:
        """Where ``job_id``'s upload is kept."""
        return os.path.join(self.directory, job_id + SUFFIX)

    async def store(self, job_id: str, pieces: AsyncIterator[bytes]) -> tuple[str, int]:
        """Write ``pieces`` to ``job_id``'s file; its path and size once it is on disk.

        Raises 507 when the disk fills or the cap would be passed (said as soon as
        it is), and whatever reading ``pieces`` raises; either way nothing is left.
        """
        listed = await _run(self.used_bytes) if self._max_bytes else 0
        named_before = self._named
        path = self.path_of(job_id)
        try:
            file, part = await _run(_open_unnamed, self.directory, path)
        except OSError as exc:
            raise _full() if exc.errno in _FULL else _unavailable(exc) from None
        spool = Spool(file, self._written)
        named = False
        mine = 0
        # The sync of what was written so far runs while the next pieces are read.
        syncing: asyncio.Future[None] | None = None
        try:
            synced = 0
            async for piece in pieces:
                held = listed + (self._named - named_before) + self._writing
                if self._max_bytes and held + len(piece) > self._max_bytes:
                    raise InsufficientStorageError(
                        "the job spool is full (proxy.jobs.max_spool_bytes); try again later"
                    )
                await _full_said(spool.append(piece))
                mine += len(piece)
                self._writing += len(piece)
                if spool.size - synced >= SYNC_BYTES and (syncing is None or syncing.done()):
                    if syncing is not None:
                        await _full_said(syncing)
                    syncing = asyncio.ensure_future(asyncio.to_thread(os.fdatasync, file.fileno()))
                    synced = spool.size
            if syncing is not None:
                await _full_said(asyncio.shield(syncing))
            await _full_said(_run(_name, file.fileno(), part, path))
            named = True
            self._named += mine
            return path, spool.size
        finally:
            self._writing -= mine
            if syncing is not None:
                # Its thread uses the descriptor: the file is closed only once it is done.
                await asyncio.wait((syncing,))
                if not syncing.cancelled():
                    syncing.exception()
            spool.close()
            if part is not None and not named:
                await _run(_unlink, part)

    def used_bytes(self) -> int:
        """Bytes the spool's named files hold (blocking: run off the event loop)."""
        total = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat().st_size
        return total

    async def remove(self, path: str) -> None:
        """Delete a spool file (already gone is fine)."""
        await _run(_unlink, path)

    async def remove_older_than(self, age_s: float) -> int:
        """Delete files no job can still need (older than the longest result TTL)."""
        return await _run(self._remove_older_than, time.time() - age_s)

    def _remove_older_than(self, before: float) -> int:
        removed = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith((SUFFIX, ".part")) and entry.stat().st_mtime < before:
                    _unlink(entry.path)
                    removed += 1
        return removed


async def _run(function: Callable[..., _T], *args: object) -> _T:
    """``function`` in a worker thread; a cancelled caller still waits for it to end, so
    the descriptors it uses are not closed under it."""
    work = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait((work,))
        raise


async def _full_said(work: Awaitable[_T]) -> _T:
    """``work`` awaited; a full disk is said as 507, not as the spool's 503."""
    try:
        return await work
    except ServiceUnavailableError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno in _FULL:
            raise _full() from None
        raise
    except OSError as exc:
        if exc.errno in _FULL:
            raise _full() from None
        raise


def _full() -> InsufficientStorageError:
    log.error("the job spool's disk is full")
    return InsufficientStorageError("the job spool's disk is full; try again later")


def _open_unnamed(directory: str, path: str) -> tuple[IO[bytes], str | None]:
    """A new file in ``directory`` with no name yet (``O_TMPFILE``, which may be given one
    later: no ``O_EXCL``), or, where the filesystem cannot, a ``.part`` file beside
    ``path``, the name it is given once whole."""
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        part = path + ".part"
        fd = os.open(part, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        return open(fd, "w+b", buffering=0), part
    return open(fd, "w+b", buffering=0), None


def _name(fd: int, part: str | None, path: str) -> None:
    """Sync the file and give it its name ``path``, then sync the directory (the name)."""
    os.fsync(fd)
    if part is not None:
        os.rename(part, path)
    else:
        # Through a directory descriptor: only then does os.link call linkat() with
        # AT_SYMLINK_FOLLOW (plain link() would try to link the /proc symlink itself).
        fds = os.open("/proc/self/fd", os.O_RDONLY)
        try:
            os.link(str(fd), path, src_dir_fd=fds, follow_symlinks=True)
        finally:
            os.close(fds)
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _unavailable(exc: OSError) -> ServiceUnavailableError:
    log.error("cannot spool a job's upload: %s", exc)
    return ServiceUnavailableError(
        "the job's upload cannot be stored right now", code="spool_unavailable"
    )


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
