"""A real PostgreSQL server for the store's tests (and its benchmark): Debian's binaries,
a temporary data directory, a free port on 127.0.0.1, stopped by its PID.

PostgreSQL refuses to run as root, so when the tests do (as ``scripts/test`` and
CI run them) the server runs as the ``postgres`` user Debian's package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.helpers.processes import free_port

#: Settings for tests: nothing they do needs to survive a power cut.
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def postgres_bin() -> Path | None:
    """The directory of ``initdb`` and ``postgres``: on the PATH, else Debian's newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian keeps them off the PATH)."""
    found = shutil.which("initdb")
    if found is not None:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


def unavailable() -> str | None:
    """Why a server cannot be run here, or None when it can."""
    if postgres_bin() is None:
        return "PostgreSQL is not installed (scripts/test installs Debian's postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run PostgreSQL as"
    return None


class PostgresServer:
    """One PostgreSQL server: ``start`` (``initdb`` the first time), ``stop``, ``start`` again
    on the same port and data, ``remove`` at the end."""

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError(unavailable() or "no PostgreSQL")
        self.bin = bin_dir
        self.port = free_port()
        self.settings = dict(settings or {})
        # Not under pytest's tmp_path: its parents are root's alone, and the server
        # runs as another user.
        self.directory = Path(tempfile.mkdtemp(prefix="proxy-pg-"))
        self.data = self.directory / "data"
        self.process: subprocess.Popen[bytes] | None = None
        self._as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self._as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def url(self, database: str = "postgres", *, scheme: str = "postgresql") -> str:
        """The URL a client connects to ``database`` with (trust authentication)."""
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Run the server (creating its cluster first if there is none) until it accepts."""
        if not self.data.exists():
            self._run_as_server(
                "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                "--locale=C", "--no-sync",
            )  # fmt: skip
        options = [f"-c{name}={value}" for name, value in self.settings.items()]
        self.process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.directory), *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **self._as_user,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"postgres exited with {self.process.returncode}")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("postgres did not start within 30 s")

    def stop(self) -> None:
        """Stop the server by its PID (a fast shutdown: clients are disconnected)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def create_database(self, name: str) -> str:
        """Create the database ``name``; its URL."""
        subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
             "postgres", name],
            check=True,
        )  # fmt: skip
        return self.url(name)

    def psql(self, database: str, sql: str) -> str:
        """Run ``sql`` in ``database``; what it printed (unaligned, tuples only)."""
        done = subprocess.run(
            [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True,
            capture_output=True,
            text=True,
        )  # fmt: skip
        return done.stdout.strip()

    def remove(self) -> None:
        """Stop the server and delete its data."""
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.directory)

    def _run_as_server(self, program: str, *args: str) -> None:
        command: Sequence[str] = [str(self.bin / program), *args]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, **self._as_user)
