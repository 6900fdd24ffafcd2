"""Serving one process until it is told to stop, and then draining it.

aiohttp's ``run_app`` closes every connection for reading (its
``pre_shutdown``: from then on incoming bytes are dropped) before
``on_shutdown`` runs, so an upload whose body is still arriving at SIGTERM
can never complete: its handler waits for bytes that are thrown away until
the shutdown timeout cancels it. Here the order is ours:

1. SIGTERM (or SIGINT): the listening sockets close, so new connections are
   refused; readiness turns unready and every answer closes its connection;
   realtime sessions are told to reconnect (:func:`~proxy.app.start_draining`).
2. Requests already begun are served, their bodies still read, until the
   last one is done or ``drain_timeout_s`` passes (a second signal ends the
   wait early).
3. Only then does aiohttp shut down: idle keep-alive connections close,
   ``on_shutdown`` and the cleanups run, and whatever is still running gets
   :data:`~proxy.app.DRAIN_GRACE_S` before it is cancelled.

The process exits as soon as the last request in flight is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from .app import DRAIN_GRACE_S, SERVER_SETTINGS, create_app, start_draining
from .app_state import STATE_KEY
from .config import Config

log = logging.getLogger("proxy")

#: A request's headers may have been read and its handler not yet begun when the
#: count first reads 0: the drain looks once more after this long.
_SETTLE_S = 0.05


#: The signals that stop the server (a second one cuts its drain short).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def serve(config: Config, host: str, port: int, *, reuse_port: bool = False) -> None:
    """Serve ``config``'s proxy on ``host:port`` until SIGTERM or SIGINT, then drain."""
    asyncio.run(_serve(config, host, port, reuse_port=reuse_port))


async def _serve(config: Config, host: str, port: int, *, reuse_port: bool) -> None:
    # Listened for before anything starts: a signal during the start (a worker's
    # supervisor passing one on) then drains a server with nothing to drain.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held back until now
    app = create_app(config)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        # Only what is left after our own drain is held to this.
        shutdown_timeout=DRAIN_GRACE_S,
        keepalive_timeout=config.proxy.keepalive_timeout_s,
        **SERVER_SETTINGS,  # type: ignore[arg-type]
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
        await site.start()
        log.info("serving on %s", site.name)
        await stop.wait()
        stop.clear()
        for listening in list(runner.sites):
            await listening.stop()  # the listening socket only; connections read on
        await start_draining(app)
        if not await _drained(app, config.proxy.drain_timeout_s, stop):
            # Cut short by a second signal: streams end properly now, not mid-frame.
            app[STATE_KEY].cut_streams()
    finally:
        await runner.cleanup()


async def _drained(app: web.Application, drain_s: float, stop: asyncio.Event) -> bool:
    """Wait until no handler runs, ``drain_s`` passes, or ``stop`` is set again; whether
    the wait ended before the deadline's own end of streams (a second signal)."""
    state = app[STATE_KEY]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_s
    while loop.time() < deadline and not stop.is_set():
        if not state.handling:
            await asyncio.sleep(_SETTLE_S)
            if not state.handling:
                log.info("drained: nothing in flight")
                return True
            continue
        waits = [asyncio.ensure_future(state.idle.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(
                waits, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for wait in waits:
                wait.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await wait
    log.info("drain ended with %d handlers still running", state.handling)
    return not stop.is_set()
