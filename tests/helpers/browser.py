"""Debian's chromium, headless, as the browser tests and the scripts that photograph or time
the pages launch it (Playwright drives it; scripts/test installs it)."""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

#: No sandbox (tests run as root in a container), no GPU, and none of the browser's own
#: traffic: the tests fail on any request to another origin.
QUIET_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


async def launch(playwright: Any, *extra_args: str) -> Any:
    """A headless chromium from ``playwright`` (an ``async_playwright()``), with ``extra_args``."""
    return await playwright.chromium.launch(
        executable_path=CHROMIUM, args=[*QUIET_ARGS, *extra_args]
    )
