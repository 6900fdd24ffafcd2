"""``python -m proxy``: run the transcription proxy."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import resource
import signal
import sys
from types import FrameType

from . import logs
from .config import Config, ConfigError, load_config
from .serving import STOP_SIGNALS, serve

log = logging.getLogger("proxy")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, load the config and serve until told to stop."""
    parser = argparse.ArgumentParser(
        prog="python -m proxy", description="Run the streaming transcription proxy."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    parser.add_argument("--config", help="Bifrost-style JSON config file")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (1)")
    parser.add_argument("--log-level", default="INFO", help="logging level (INFO)")
    parser.add_argument(
        "--log-format", choices=("json", "text"), default="json", help="log lines as (json)"
    )
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    _raise_open_file_limit()
    try:
        if args.workers <= 1:
            _serve(config, args.host, args.port, reuse_port=False)
            return 0
        return _supervise(config, args.host, args.port, args.workers)
    except ConfigError as exc:  # found while building the app (a missing extra, say)
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Starting to listen is the only OSError that reaches here.
        print(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; "
            "is another server using it? choose another --port",
            file=sys.stderr,
        )
        return 1


def _serve(config: Config, host: str, port: int, *, reuse_port: bool) -> None:
    # Stops accepting on SIGTERM/SIGINT, serves what is in flight (bodies
    # still arriving included) for up to drain_timeout_s, then exits.
    serve(config, host, port, reuse_port=reuse_port)


def _supervise(config: Config, host: str, port: int, workers: int) -> int:
    """Fork ``workers`` servers sharing the port (SO_REUSEPORT); pass signals on; wait."""
    children: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # Held back while forking: a worker takes them once its server listens for them
    # (serving.STOP_SIGNALS), and one sent meanwhile is not lost, nor fatal to it.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            # Its own process group: a terminal's Ctrl-C reaches it once,
            # through the supervisor, rather than twice.
            os.setpgrp()
            code = 0
            try:
                _serve(config, host, port, reuse_port=True)
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    log.info("serving with %d worker processes", workers)
    failed = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    return 1 if failed else 0


def _raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one.

    Every relayed request holds two sockets; the common soft limit of 1024
    would cap the proxy near 500 requests in flight.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("open file limit raised from %d to %d", soft, hard)


if __name__ == "__main__":
    sys.exit(main())
