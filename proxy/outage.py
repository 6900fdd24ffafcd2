"""A background loop's failures logged once an outage, not once a poll (the jobs'
loops, governance's poll of the store)."""

from __future__ import annotations

import logging
import time


class Outage:
    """What one polling loop logs while what it polls is down: the first failure with its
    traceback, nothing more until a poll works again, then how long it lasted. A store
    down for a minute would otherwise be sixty tracebacks from each loop."""

    def __init__(self, log: logging.Logger, doing: str) -> None:
        self._log = log
        self._doing = doing
        self._since: float | None = None
        self._failures = 0

    def failed(self) -> None:
        """A poll failed (call it in the ``except`` block, for the traceback)."""
        self._failures += 1
        if self._since is None:
            self._since = time.monotonic()
            self._log.exception("%s failed; tried again at each poll, quietly", self._doing)

    def worked(self) -> None:
        """A poll worked."""
        if self._since is None:
            return
        self._log.warning(
            "%s works again, after %.1f s and %d failed polls",
            self._doing,
            time.monotonic() - self._since,
            self._failures,
        )
        self._since = None
        self._failures = 0
