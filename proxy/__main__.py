"""``python -m proxy``: run the transcription proxy."""

from __future__ import annotations

import argparse
import logging
import resource
import sys

from aiohttp import web

from .app import SERVER_SETTINGS, create_app
from .config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, load the config and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m proxy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    parser.add_argument("--config", help="Bifrost-style JSON config file")
    parser.add_argument("--log-level", default="INFO", help="logging level (INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    _raise_open_file_limit()
    web.run_app(
        create_app(config),
        host=args.host,
        port=args.port,
        print=lambda message: logging.getLogger("proxy").info("%s", message),
        **SERVER_SETTINGS,  # type: ignore[arg-type]
    )
    return 0


def _raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one.

    Every relayed request holds two sockets; the common soft limit of 1024
    would cap the proxy near 500 requests in flight.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        logging.getLogger("proxy").info("open file limit raised from %d to %d", soft, hard)


if __name__ == "__main__":
    sys.exit(main())
