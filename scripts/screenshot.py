"""The README's picture of the caption page, mid-transcription, taken in headless Chromium.

A fake upstream streams timed segments and stops halfway, the proxy runs in
this process, and Debian's chromium (driven by Playwright) drops a file on
the page and photographs it while the captions are still arriving.

    .venv/bin/python scripts/screenshot.py            # writes scripts/data/caption-page.png
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.app import create_app  # noqa: E402
from proxy.config import parse_config  # noqa: E402

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
        browser = await playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
        )
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


if __name__ == "__main__":
    asyncio.run(main())
