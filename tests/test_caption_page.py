"""The caption page at GET /, driven in a real browser: Debian's chromium, by Playwright.

Playwright's own browser download is not used (nor reachable): the system
chromium is launched by path. Microphone tests feed Chromium's fake capture
device from a WAV file.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import shutil
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.helpers.browser import launch
from tests.helpers.client import ProxyFactory, base_url
from tests.helpers.upstream import FakeUpstream, ReceivedRequest, provider_config

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

SAMPLE = Path(__file__).parent / "data" / "sample.wav"
pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed (scripts/test installs it)"
)


class Browser:
    """A page in headless Chromium, and everything it logged that went wrong."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )

    def script_errors(self, *expected_statuses: int) -> list[str]:
        """Errors other than the browser's note of an error status the test asked for."""
        expected = tuple(f"status of {status}" for status in expected_statuses)
        return [
            e
            for e in self.errors
            if not (e.startswith("Failed to load resource") and any(x in e for x in expected))
        ]


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Opens pages in a fresh headless Chromium; closes it after the test.

    Its microphone plays the sample, then 1.5 s of silence, over and over.
    """
    microphone = tmp_path / "microphone.wav"
    with wave.open(str(SAMPLE)) as source, wave.open(str(microphone), "wb") as target:
        target.setparams(source.getparams())
        target.writeframes(source.readframes(source.getnframes()))
        target.writeframes(bytes(int(1.5 * source.getframerate()) * source.getsampwidth()))
    async with playwright_api.async_playwright() as playwright:
        browser = await launch(
            playwright,
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}",
        )

        async def open_page(url: str) -> Browser:
            context = await browser.new_context(accept_downloads=True)
            await context.grant_permissions(["microphone", "clipboard-read", "clipboard-write"])
            opened = Browser(await context.new_page())
            await opened.page.goto(url)
            return opened

        try:
            yield open_page
        finally:
            await browser.close()


async def drop_file(page: Any, data: bytes, name: str, content_type: str = "audio/wav") -> None:
    """Drop a file on the page's drop zone, as a person dragging it from their desktop does."""
    await page.evaluate(
        """([encoded, name, type]) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type }));
            const zone = document.getElementById("drop");
            const init = { dataTransfer: transfer, bubbles: true };
            zone.dispatchEvent(new DragEvent("dragover", init));
            zone.dispatchEvent(new DragEvent("drop", init));
        }""",
        [base64.b64encode(data).decode(), name, content_type],
    )


async def captions(page: Any) -> str:
    text: str = await page.locator("#captions").inner_text()
    return " ".join(text.split())


async def downloaded(page: Any, button: str) -> str:
    async with page.expect_download() as info:
        await page.click(button)
    download = await info.value
    return await asyncio.to_thread(Path(await download.path()).read_text)


async def test_page_is_served_with_a_strict_policy_and_can_be_turned_off(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(provider_config(upstream))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url(server)}/") as response:
            body = await response.text()
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/html")
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
            assert 'aria-live="polite"' in body
        for asset in ("/ui/captions.js", "/ui/captions.css"):
            async with session.get(f"{base_url(server)}{asset}") as response:
                assert response.status == 200
    config = provider_config(upstream)
    config["proxy"] = {"web_ui": False}
    off = await make_proxy(config)
    async with aiohttp.ClientSession() as session, session.get(f"{base_url(off)}/") as response:
        assert response.status == 404


@pytest.fixture
async def local(make_proxy: ProxyFactory) -> TestServer:
    pytest.importorskip("faster_whisper", reason="the local extra is not installed")
    return await make_proxy({"providers": {"local": {}}})


async def test_dropped_file_is_captioned_by_the_embedded_model(
    local: TestServer, chromium: Callable[..., Any]
) -> None:
    browser = await chromium(f"{base_url(local)}/")
    page = browser.page
    await expect(page.locator("#model")).to_have_value("local/tiny.en")
    await drop_file(page, SAMPLE.read_bytes(), "sample.wav")
    await expect(page.locator("#captions")).to_contain_text("weather", timeout=30_000)
    await page.wait_for_selector("#facts:not([hidden])", timeout=30_000)
    facts = await page.locator("#facts").inner_text()
    assert "local" in facts
    assert "tiny.en" in facts
    assert "Latency" in facts
    assert await page.locator("#upload-bar").get_attribute("value") == "100"
    assert "of 2" in await page.locator("#upload-text").inner_text()  # bytes shown
    text = await captions(page)
    assert "sunny" in text
    assert "0:0" in text  # timestamps from the model's segments
    srt = await downloaded(page, "#download-srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:0")
    assert "weather" in srt
    vtt = await downloaded(page, "#download-vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    assert "weather" in vtt
    txt = await downloaded(page, "#download-txt")
    assert "apples" in txt
    await page.click("#copy")
    assert "weather" in await page.evaluate("navigator.clipboard.readText()")
    assert browser.script_errors() == []


async def test_captions_appear_while_the_upstream_still_streams(
    make_proxy: ProxyFactory, upstream: FakeUpstream, chromium: Callable[..., Any]
) -> None:
    first_shown = asyncio.Event()

    async def held_stream(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(event: dict[str, Any]) -> None:
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")

        await send({"type": "transcript.text.delta", "delta": "Good morning"})
        # The rest only once the page has shown the first caption: ordering, not timing.
        await asyncio.wait_for(first_shown.wait(), 20)
        await send({"type": "transcript.text.delta", "delta": ", everyone."})
        await send({"type": "transcript.text.done", "text": "Good morning, everyone."})
        await response.write_eof()
        return response

    upstream.respond = held_stream
    server = await make_proxy(provider_config(upstream))
    browser = await chromium(f"{base_url(server)}/")
    page = browser.page
    await page.select_option("#format", "json")
    await page.set_input_files("#file", str(SAMPLE))
    await expect(page.locator("#captions")).to_contain_text("Good morning")
    assert "everyone" not in await captions(page)
    first_shown.set()
    await expect(page.locator("#captions")).to_contain_text("everyone")
    await page.wait_for_selector("#facts:not([hidden])")
    assert await captions(page) == "Good morning, everyone."
    # No timings from this upstream: captions cannot be made, text can.
    assert await page.is_disabled("#download-srt")
    assert await page.is_enabled("#download-txt")
    sent = upstream.last
    assert sent.field("stream") == "true"
    assert sent.names[0] == "model"
    assert sent.names[-1] == "file"
    assert browser.script_errors() == []


async def test_microphone_captions_come_over_a_realtime_session(
    make_proxy: ProxyFactory, upstream: FakeUpstream, chromium: Callable[..., Any]
) -> None:
    upstream.keep_files = True

    async def numbered(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        return web.json_response({"text": f"turn{len(upstream.requests)}"})

    upstream.respond = numbered
    server = await make_proxy(
        {**provider_config(upstream), "proxy": {"realtime": {"vad": "loudness"}}}
    )
    browser = await chromium(f"{base_url(server)}/")
    page = browser.page
    await page.click("#mic")
    # The fake microphone plays the sample over and over: each saying is a turn.
    await expect(page.locator("#captions")).to_contain_text("turn2", timeout=40_000)
    await page.click("#stop")
    await expect(page.locator("#status")).to_have_text("Stopped.", timeout=20_000)
    numbers = [int(n) for n in re.findall(r"turn(\d+)", await captions(page))]
    assert numbers == sorted(numbers)
    assert numbers[:2] == [1, 2]
    # Each turn reached the upstream as a 16 kHz WAV of the microphone's speech.
    turns = [r for r in upstream.requests if r.complete]
    assert all(r.file.filename == "audio.wav" for r in turns)
    assert all(r.file.data and r.file.data[:4] == b"RIFF" for r in turns)
    first = turns[0].file.data
    assert first is not None
    with wave.open(io.BytesIO(first)) as heard:
        assert heard.getframerate() == 16000
        assert heard.getnframes() > 16000  # more than a second of it
    srt = await downloaded(page, "#download-srt")
    assert "\nturn1\n" in srt
    assert browser.script_errors() == []


async def test_with_a_virtual_key_the_microphone_uses_a_client_secret(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    chromium: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    key = "sk-bf-page-0123456789"
    config = {
        **provider_config(upstream),
        "client": {"enforce_auth_on_inference": True},
        "governance": {
            "virtual_keys": [
                {
                    "id": "page",
                    "value": key,
                    "provider_configs": [{"provider": "openai", "allowed_models": ["*"]}],
                }
            ]
        },
        "proxy": {"realtime": {"vad": "loudness"}},
    }
    server = await make_proxy(config)
    browser = await chromium(f"{base_url(server)}/")
    page = browser.page
    await page.fill("#key", key)
    await page.dispatch_event("#key", "change")
    await page.click("#mic")
    await expect(page.locator("#captions")).to_contain_text("heard", timeout=40_000)
    await page.click("#stop")
    await expect(page.locator("#status")).to_have_text("Stopped.", timeout=20_000)
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.access"]
    assert "POST /v1/realtime/client_secrets 200" in lines
    assert key not in caplog.text
    assert browser.script_errors(401) == []  # the model list, asked before the key was typed


async def test_microphone_shows_partial_captions_greyed_until_a_turn_is_complete(
    local: TestServer, chromium: Callable[..., Any]
) -> None:
    browser = await chromium(f"{base_url(local)}/")
    page = browser.page
    await page.click("#mic")
    # While the sample is spoken, words come greyed (partial) before the turn is complete.
    await page.wait_for_function(
        """() => [...document.querySelectorAll('#captions li.partial')]
                 .some((li) => li.textContent.trim().length > 0)""",
        timeout=60_000,
    )
    await page.wait_for_function(
        """() => [...document.querySelectorAll('#captions li:not(.partial)')]
                 .some((li) => li.textContent.includes('weather'))""",
        timeout=60_000,
    )
    await page.click("#stop")
    await expect(page.locator("#status")).to_have_text("Stopped.", timeout=30_000)
    assert await page.locator("#captions li.partial").count() == 0
    assert browser.script_errors() == []


async def test_401_without_a_key_shows_its_message(
    make_proxy: ProxyFactory, upstream: FakeUpstream, chromium: Callable[..., Any]
) -> None:
    config = provider_config(upstream)
    config["client"] = {"enforce_auth_on_inference": True}
    config["governance"] = {
        "virtual_keys": [
            {
                "id": "page",
                "value": "sk-bf-page-0123456789",
                "provider_configs": [{"provider": "openai"}],
            }
        ]
    }
    server = await make_proxy(config)
    browser = await chromium(f"{base_url(server)}/")
    page = browser.page
    await page.wait_for_selector("#error:not([hidden])")
    assert "(401)" in await page.locator("#error").inner_text()
    await page.set_input_files("#file", str(SAMPLE))
    await expect(page.locator("#status")).to_have_text("Failed.")
    message = await page.locator("#error").inner_text()
    assert "(401)" in message
    assert "credential is required" in message
    assert not upstream.requests
    # With the key, kept for the session, the same upload goes through.
    await page.fill("#key", "sk-bf-page-0123456789")
    await page.dispatch_event("#key", "change")
    await expect(page.locator("#error")).to_be_hidden()
    await page.set_input_files("#file", [])
    await page.set_input_files("#file", str(SAMPLE))
    await expect(page.locator("#captions")).to_contain_text("heard")
    assert await page.evaluate("sessionStorage.getItem('transcription-proxy.virtual-key')") == (
        "sk-bf-page-0123456789"
    )
    assert upstream.last.headers["Authorization"] != "Bearer sk-bf-page-0123456789"
    assert browser.script_errors(401) == []


async def test_bad_file_shows_its_message(local: TestServer, chromium: Callable[..., Any]) -> None:
    browser = await chromium(f"{base_url(local)}/")
    page = browser.page
    await drop_file(page, b"this is not audio at all" * 100, "notes.wav")
    await page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    message = await page.locator("#error").inner_text()
    assert "could not be decoded" in message
    assert "(400)" in message
    assert await captions(page) == ""
    assert browser.script_errors(400) == []


async def test_stop_closes_the_upstream_request(
    make_proxy: ProxyFactory, upstream: FakeUpstream, chromium: Callable[..., Any]
) -> None:
    gone = asyncio.Event()

    async def never_done(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"type":"transcript.text.delta","delta":"Still talking"}\n\n')
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            gone.set()
            raise
        return response

    upstream.respond = never_done
    server = await make_proxy(provider_config(upstream))
    browser = await chromium(f"{base_url(server)}/")
    page = browser.page
    await page.set_input_files("#file", str(SAMPLE))
    await expect(page.locator("#captions")).to_contain_text("Still talking")
    await page.click("#stop")
    await asyncio.wait_for(gone.wait(), 10)
    assert await page.locator("#status").inner_text() == "Stopped."
    assert await page.is_enabled("#mic")
    assert browser.script_errors() == []


async def test_page_fits_a_phone(
    make_proxy: ProxyFactory, upstream: FakeUpstream, chromium: Callable[..., Any]
) -> None:
    server = await make_proxy(provider_config(upstream))
    browser = await chromium(f"{base_url(server)}/")
    page = browser.page
    await page.set_viewport_size({"width": 360, "height": 740})
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    # Every control has a label a screen reader reads, and Tab reaches it in order.
    unlabelled = await page.evaluate(
        """[...document.querySelectorAll('input, select')]
            .filter((el) => !el.labels || el.labels.length === 0).map((el) => el.id)"""
    )
    assert unlabelled == []
    order = []
    for _ in range(5):
        await page.keyboard.press("Tab")
        order.append(await page.evaluate("document.activeElement.id"))
    assert order == ["model", "language", "format", "key", "file"]
    assert browser.script_errors() == []
