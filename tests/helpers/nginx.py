"""nginx from Debian's package, run with the repository's own deploy/nginx.conf."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from .processes import free_port

DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"

_MAIN = """
user root;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  include {site};
}}
"""


def nginx_binary() -> str | None:
    """The nginx program, if installed (scripts/test installs nginx-light)."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )


def site_config(replica_ports: Iterable[int], listen_port: int) -> str:
    """deploy/nginx.conf with its upstream's servers on ``replica_ports`` (their options
    kept) and listening on 127.0.0.1:``listen_port``."""
    text = DEPLOY_CONF.read_text()

    def servers(match: re.Match[str]) -> str:
        indent, options = match[1], match[2]
        return "".join(f"{indent}server 127.0.0.1:{port}{options};\n" for port in replica_ports)

    text, found = re.subn(
        r"(?:^( *)server 127\.0\.0\.1:\d+([^;\n]*);\n)+", servers, text, flags=re.M
    )
    if found != 1 or "listen 8080;" not in text:
        raise RuntimeError(f"{DEPLOY_CONF} no longer has the lines rewritten here")
    return text.replace("listen 8080;", f"listen 127.0.0.1:{listen_port};")


@asynccontextmanager
async def nginx_in_front(replica_ports: Sequence[int], prefix: Path) -> AsyncIterator[str]:
    """nginx on a free port in front of the replicas; yields its URL."""
    binary = nginx_binary()
    assert binary is not None
    listen = free_port()
    site = prefix / "site.conf"
    site.write_text(site_config(replica_ports, listen))
    main = prefix / "nginx.conf"
    main.write_text(_MAIN.format(prefix=prefix, site=site))
    process = await asyncio.create_subprocess_exec(
        binary, "-c", str(main), "-p", str(prefix), "-g", "daemon off;"
    )
    url = f"http://127.0.0.1:{listen}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"{url}/health"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        yield url
    finally:
        process.terminate()
        await process.wait()
