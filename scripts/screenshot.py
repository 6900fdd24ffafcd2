"""The README's picture of the caption page, mid-transcription, taken in headless Chromium.

A fake upstream streams timed segments and stops halfway, the proxy runs in
this process, and Debian's chromium (driven by Playwright) drops a file on
the page and photographs it while the captions are still arriving.

    .venv/bin/python scripts/screenshot.py            # writes scripts/data/caption-page.png

It then photographs the dashboard (``/dashboard``) over a day of made-up requests
written through the request log:

    .venv/bin/python scripts/screenshot.py dashboard  # writes scripts/data/dashboard.png only
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.app import create_app  # noqa: E402
from proxy.app_state import REQUEST_LOG_KEY  # noqa: E402
from proxy.config import parse_config  # noqa: E402
from proxy.store.log_rows import LogRow  # noqa: E402
from tests.helpers.browser import launch  # noqa: E402

LINES = [
    (0.0, 3.2, "Good morning, and thanks for joining the quarterly review."),
    (3.4, 7.9, "First, the numbers: revenue grew eleven percent over the last quarter,"),
    (8.0, 11.6, "driven mostly by the new streaming plans in Europe."),
    (12.1, 15.0, "Next, I'd like to hand over to Priya for the product update."),
    (15.3, 19.4, "Thanks. Two launches this month, both ahead of schedule."),
]


async def main() -> None:
    halfway = asyncio.Event()
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n, (start, end, text) in enumerate(LINES):
            if n == 3:
                halfway.set()
                await release.wait()
            event = {
                "type": "transcript.text.segment",
                "id": f"seg_{n}",
                "start": start,
                "end": end,
                "text": text,
            }
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
            await asyncio.sleep(0.05)
        done = {"type": "transcript.text.done", "text": " ".join(t for _, _, t in LINES)}
        await response.write(b"data: " + orjson.dumps(done) + b"\n\n")
        return response

    upstream_app = web.Application()
    upstream_app.router.add_post("/v1/audio/transcriptions", stream)
    upstream = TestServer(upstream_app)
    await upstream.start_server()
    config = {
        "providers": {
            "openai": {
                "keys": [{"value": "sk-demo", "models": ["gpt-4o-transcribe"]}],
                "network_config": {"base_url": str(upstream.make_url("")).rstrip("/")},
            }
        }
    }
    proxy = TestServer(create_app(parse_config(config, {})))
    await proxy.start_server()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await launch(playwright)
        page = await browser.new_page(viewport={"width": 900, "height": 820})
        await page.goto(str(proxy.make_url("/")))
        await page.select_option("#format", "json")
        await page.set_input_files("#file", str(ROOT / "tests" / "data" / "sample.wav"))
        await halfway.wait()
        await page.locator("#captions li").first.wait_for()
        await asyncio.sleep(0.3)
        out = ROOT / "scripts" / "data" / "caption-page.png"
        await page.screenshot(path=str(out), full_page=True)
        release.set()
        await browser.close()
    await proxy.close()
    await upstream.close()
    print(f"wrote {out.relative_to(ROOT)}")


def day_of_requests(now: float) -> list[LogRow]:
    """A day of plausible rows: three teams on two providers, a busy evening, a few
    errors."""
    rng = random.Random(7)
    teams = ("team-a", "team-b", "support")
    routes = (
        ("openai", "whisper-1"),
        ("openai", "gpt-4o-transcribe"),
        ("groq", "whisper-large-v3"),
    )
    rows = []
    for n in range(900):
        at = now - rng.triangular(0, 86_400, 30_000)
        provider, model = routes[rng.randrange(3) if n % 4 else 0]
        failed = rng.random() < 0.03
        audio = round(rng.uniform(5, 240), 1)
        rows.append(
            LogRow(
                id=f"req_{n:05d}{rng.getrandbits(40):010x}",
                object="transcription",
                timestamp=at,
                provider=provider,
                model_requested=model,
                model_deployment=model,
                virtual_key_id=teams[min(2, int(rng.expovariate(1.2)))],
                status="error" if failed else "success",
                status_code=502 if failed else 200,
                error_code="bad_gateway" if failed else None,
                latency=int(rng.lognormvariate(6.6, 0.5)),
                audio_seconds=None if failed else audio,
                audio_seconds_source="answer",
                cost=0.0 if failed else round(audio / 60 * 0.006, 6),
                number_of_retries=int(rng.random() < 0.05),
                fallback_index=None if failed else 0,
            )
        )
    return rows


async def dashboard() -> None:
    """The dashboard over a day of requests, in a store of its own (a temporary directory)."""
    with tempfile.TemporaryDirectory() as data_dir:
        config = {
            "providers": {"openai": {"keys": [{"value": "sk-demo"}]}},
            "proxy": {"data_dir": data_dir},
            "governance": {
                "virtual_keys": [
                    {
                        "id": team,
                        "value": f"sk-bf-{team}-demo-0123456789",
                        "provider_configs": [{"provider": "openai", "allowed_models": ["*"]}],
                        "budget_id": budget,
                    }
                    for team, budget in (
                        ("team-a", "monthly"),
                        ("team-b", "monthly"),
                        ("support", "daily"),
                    )
                ],
                "budgets": [
                    {"id": "monthly", "max_limit": 25, "reset_duration": "1M"},
                    {"id": "daily", "max_limit": 1, "reset_duration": "1d"},
                ],
            },
        }
        proxy = TestServer(create_app(parse_config(config, {})))
        await proxy.start_server()
        log = proxy.app[REQUEST_LOG_KEY]
        for row in day_of_requests(time.time()):
            log.add(row)
        await log.flush(30)
        from playwright.async_api import async_playwright

        async with async_playwright() as playwright:
            browser = await launch(playwright)
            page = await browser.new_page(viewport={"width": 1280, "height": 1180})
            await page.goto(str(proxy.make_url("/dashboard")))
            await page.wait_for_selector("body[data-painted]")
            out = ROOT / "scripts" / "data" / "dashboard.png"
            await page.screenshot(path=str(out))
            await browser.close()
        await proxy.close()
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    # Both pictures, or the one named: caption or dashboard.
    chosen = sys.argv[1:] or ["caption", "dashboard"]
    if "caption" in chosen:
        asyncio.run(main())
    if "dashboard" in chosen:
        asyncio.run(dashboard())
