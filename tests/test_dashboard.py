"""The operator's dashboard at GET /dashboard, driven in a real browser: Debian's chromium,
by Playwright, against a proxy with its own SQLite store and an admin key, fed real
transcriptions through the recording fake upstream.

Every request the page makes is seen by a route handler: one to another origin fails
the test (and is never sent).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app_state import REQUEST_LOG_KEY, STATE_KEY
from proxy.store.log_rows import LogRow
from proxy.web_ui import DASHBOARD_MODULES
from tests.helpers.browser import launch
from tests.helpers.client import ProxyFactory, base_url, form, post
from tests.helpers.upstream import (
    FakeUpstream,
    ReceivedRequest,
    failing,
    provider_config,
    transcript_json,
)

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed (scripts/test installs it)"
)

ADMIN = "sk-admin-dashboard-0123456789"
TEAM_A = "sk-bf-team-a-0123456789"
#: A model name that is markup: it must show as these characters, and never run.
HOSTILE_MODEL = "<img src=x onerror=window.__pwned=1>"
GOVERNANCE_ROUTE = "/api/governance/virtual-keys"


def dashboard_config(upstream: FakeUpstream, tmp_path: Path) -> dict[str, Any]:
    """The fake upstream (one retry, quickly), a virtual key, an admin key, whisper-1
    priced, and the log flushed every 20 ms into a store in ``tmp_path``."""
    config = provider_config(upstream, max_retries=1, retry_backoff_initial=1, retry_backoff_max=5)
    config["governance"] = {
        "virtual_keys": [
            {
                "id": "team-a",
                "value": TEAM_A,
                "provider_configs": [{"provider": "openai", "allowed_models": ["*"]}],
                "budget_id": "monthly",
            }
        ],
        "budgets": [{"id": "monthly", "max_limit": 50, "reset_duration": "1M"}],
        "admin_keys": [ADMIN],
        "model_prices": {"whisper-1": 0.6},  # $0.01 a second: the fake upstream's 2 s, $0.02
    }
    config["proxy"] = {"data_dir": str(tmp_path)}
    config["logs"] = {"flush_interval_ms": 20}
    return config


@pytest.fixture
async def server(make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path) -> TestServer:
    """The proxy with :func:`dashboard_config`, in front of ``upstream``."""
    return await make_proxy(dashboard_config(upstream, tmp_path))


class Page:
    """A dashboard in headless Chromium: what it logged that went wrong, and every
    request it tried to make to another origin."""

    def __init__(self, page: Any, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.errors: list[str] = []
        self.elsewhere: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )

    async def guard(self, route: Any) -> None:
        """Let this origin's requests through; record and abort any other."""
        url = route.request.url
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" == self.origin:
            await route.continue_()
        else:
            self.elsewhere.append(url)
            await route.abort()

    def script_errors(self, *expected_statuses: int) -> list[str]:
        """Errors other than the browser's note of an error status the test caused."""
        expected = tuple(f"status of {status}" for status in expected_statuses)
        return [
            e
            for e in self.errors
            if not (e.startswith("Failed to load resource") and any(x in e for x in expected))
        ]

    async def sign_in(self, key: str) -> None:
        await self.page.fill("#admin-key", key)
        await self.page.click("#signin button[type=submit]")


@pytest.fixture
async def chromium() -> AsyncIterator[Callable[..., Any]]:
    """Opens the dashboard of a proxy in a fresh headless Chromium; closes it after the test."""
    async with playwright_api.async_playwright() as playwright:
        browser = await launch(playwright)

        async def open_page(server: TestServer, width: int = 1280) -> Page:
            context = await browser.new_context(viewport={"width": width, "height": 900})
            await context.grant_permissions(["clipboard-read", "clipboard-write"])
            opened = Page(await context.new_page(), base_url(server))
            await context.route("**/*", opened.guard)
            await opened.page.goto(f"{base_url(server)}/dashboard")
            return opened

        try:
            yield open_page
        finally:
            await browser.close()


async def transcribe(server: TestServer, model: str = "whisper-1", key: str | None = TEAM_A) -> str:
    """One transcription through the proxy (with ``key``, or none); its request id."""
    status, answer, headers = await post(
        server, form(("model", model), ("file", b"RIFF" * 100)), {"x-bf-vk": key} if key else {}
    )
    assert status == 200, answer
    return next(value for name, value in headers.items() if name.lower() == "x-request-id")


async def api(server: TestServer, path: str, **params: str) -> Any:
    """The operator's API's answer, as the admin."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{base_url(server)}{path}",
            params=params,
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as response,
    ):
        assert response.status == 200
        return await response.json()


async def logged(server: TestServer, *ids: str) -> None:
    """Once every row of ``ids`` is in the store, finished (the writer is off the request path)."""
    for _ in range(300):
        rows = (await api(server, "/api/logs", limit="1000"))["logs"]
        done = {row["id"] for row in rows if row["status"] != "processing"}
        if set(ids) <= done:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not logged: {set(ids) - done}")


def has_governance_api(server: TestServer) -> bool:
    return any(
        getattr(route.resource, "canonical", None) == GOVERNANCE_ROUTE
        for route in server.app.router.routes()
    )


async def test_the_page_and_its_modules_are_served_under_a_strict_policy(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = await make_proxy(dashboard_config(upstream, tmp_path))
    async with aiohttp.ClientSession() as session:
        # The page is public (it holds no data): no credential is needed for it.
        async with session.get(f"{base_url(server)}/dashboard") as response:
            page = await response.text()
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/html")
            policy = response.headers["Content-Security-Policy"]
            for directive in ("default-src 'self'", "connect-src 'self'", "form-action 'none'"):
                assert directive in policy
            assert "unsafe-inline" not in policy
        # No inline script, no inline style, nothing from another origin.
        assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
        assert "style=" not in page
        assert "<style" not in page
        assert not re.search(r"(src|href)=\"(https?:)?//", page)
        for name in ("dashboard.css", *(f"dashboard.{m}.js" for m in DASHBOARD_MODULES)):
            async with session.get(f"{base_url(server)}/dashboard/{name}") as response:
                assert response.status == 200, name
                assert "default-src 'self'" in response.headers["Content-Security-Policy"]
                assert response.headers["X-Content-Type-Options"] == "nosniff"
        # The data is not public: the API it calls refuses anyone without the key.
        async with session.get(f"{base_url(server)}/api/usage") as response:
            assert response.status == 401
    config = dashboard_config(upstream, tmp_path)
    config["proxy"]["web_ui"] = False
    off = await make_proxy(config)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url(off)}/dashboard") as response,
    ):
        assert response.status == 404


async def test_requests_sent_show_in_the_charts_the_table_the_detail_and_the_live_tail(
    server: TestServer, upstream: FakeUpstream, chromium: Callable[..., Any]
) -> None:
    failures = [500]

    async def flaky_once(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        if failures:
            return await failing(failures.pop())(request, received)
        return await transcript_json(request, received)

    upstream.respond = flaky_once
    retried = await transcribe(server)
    sent = [retried, await transcribe(server), await transcribe(server, key=None)]
    # A long-audio chunk's row, as the request log records one under its request.
    server.app[REQUEST_LOG_KEY].add(
        LogRow(
            id=f"{retried}-chunk-0",
            object="transcription.chunk",
            parent_request_id=retried,
            provider="openai",
            model_requested="whisper-1",
            status="success",
            status_code=200,
            latency=12,
            audio_seconds=1.0,
        )
    )
    await logged(server, *sent, f"{retried}-chunk-0")

    browser = await chromium(server)
    page = browser.page
    # No key yet: the proxy's refusal is shown and the key asked for.
    await expect(page.locator("#auth-message")).to_contain_text("401")
    assert await page.evaluate("document.activeElement.id") == "admin-key"
    await browser.sign_in(ADMIN)
    await page.wait_for_selector("body[data-painted]")

    # The charts are drawn with data: bars for requests, audio and cost; latency lines.
    for chart in ("requests", "audio", "cost"):
        assert await page.locator(f"#chart-{chart} .bars rect").count() > 0, chart
    assert await page.locator("#chart-latency .lines path").count() >= 2  # p50 and p95
    label = await page.locator("#chart-requests svg").get_attribute("aria-label")
    usage = await api(server, "/api/usage", group_by="virtual_key", interval="1h")
    total = sum(b["requests"] for group in usage["groups"] for b in group["buckets"])
    assert total >= len(sent)
    assert label is not None
    assert f"{total} in total" in label
    await expect(page.locator("#legend")).to_contain_text("team-a")
    await expect(page.locator("#usage-table")).to_contain_text("team-a")

    # The budget, and what team-a spent of it this month (two requests at $0.02).
    budget = page.locator('#budgets-table tr[data-key="team-a"]')
    await expect(budget).to_contain_text("$0.040 of $50.00 (0.1%)")
    await expect(page.locator("#budgets-table")).to_contain_text("every 1M")

    # The table lists the requests sent, by their ids.
    table = page.locator("#logs-table tbody")
    for request_id in sent:
        await expect(table.locator(f'tr[data-id="{request_id}"]')).to_have_count(1)

    # The log's filters: team-a's requests only, then all again.
    await page.fill("#f-keys", "team-a")
    await page.click("#filters button[type=submit]")
    await expect(table.locator(f'tr[data-id="{sent[2]}"]')).to_have_count(0)
    await expect(table.locator(f'tr[data-id="{retried}"]')).to_have_count(1)
    assert "virtual_key_ids=team-a" in await page.evaluate(
        "performance.getEntriesByType('resource').map((e) => e.name).join(' ')"
    )
    await page.click("#filters button[type=reset]")
    await expect(table.locator(f'tr[data-id="{sent[2]}"]')).to_have_count(1)

    # One request's detail: its attempts, and its children.
    await table.locator(f'tr[data-id="{retried}"] button').click()
    detail = page.locator("#detail")
    await expect(detail).to_be_visible()
    await expect(page.locator("#detail-attempts")).to_have_text(
        "2 attempts (1 retry); answered by the primary route (openai / whisper-1)."
    )
    await expect(page.locator("#children-table")).to_contain_text(f"{retried}-chunk-0")
    await expect(page.locator("#detail-fields")).to_contain_text("number_of_retries")
    await page.keyboard.press("Escape")
    await expect(detail).to_be_hidden()
    # The focus goes back to where it was.
    assert await page.evaluate("document.activeElement.textContent") == retried

    # A request made after the page loaded appears through the live tail.
    await page.check("#tail")
    for _ in range(200):
        if server.app[STATE_KEY].tails:
            break
        await asyncio.sleep(0.02)
    assert server.app[STATE_KEY].tails, "the live tail did not subscribe"
    live = await transcribe(server)
    await expect(table.locator(f'tr[data-id="{live}"]')).to_have_count(1)
    await expect(page.locator(f'#logs-table tbody tr[data-id="{live}"]')).to_contain_text("success")
    await expect(page.locator("#tail-status")).to_contain_text("so far")
    await page.uncheck("#tail")

    assert browser.elsewhere == []
    assert browser.script_errors(401, 404) == []


async def test_a_hostile_model_name_is_shown_as_text(
    server: TestServer, chromium: Callable[..., Any]
) -> None:
    await logged(server, await transcribe(server, model=HOSTILE_MODEL))
    browser = await chromium(server)
    page = browser.page
    await browser.sign_in(ADMIN)
    await page.wait_for_selector("body[data-painted]")
    await page.select_option("#group-by", "model")
    await expect(page.locator("#legend")).to_contain_text(HOSTILE_MODEL)
    await expect(page.locator("#logs-table tbody")).to_contain_text(HOSTILE_MODEL)
    row = page.locator("#logs-table tbody tr").first
    await row.locator("button").click()
    await expect(page.locator("#detail-fields")).to_contain_text(HOSTILE_MODEL)
    assert await page.locator("img").count() == 0
    assert await page.evaluate("window.__pwned") is None
    assert browser.elsewhere == []  # the would-be image's "x" was never fetched either
    assert browser.script_errors(401, 404) == []


async def test_a_wrong_admin_key_is_refused_and_asked_for_again(
    server: TestServer, chromium: Callable[..., Any]
) -> None:
    browser = await chromium(server)
    page = browser.page
    await expect(page.locator("#auth-message")).to_contain_text("401")
    await browser.sign_in("sk-admin-not-this-one-0000000000")
    message = page.locator("#auth-message")
    await expect(message).to_contain_text("refused the credential (401)")
    await expect(message).to_contain_text("Enter an admin key")
    await expect(page.locator("body")).to_have_attribute("data-auth", "refused")
    assert await page.evaluate("document.activeElement.id") == "admin-key"
    # The refused key is not kept; nothing the page drew came from it.
    assert await page.evaluate("sessionStorage.length") == 0
    assert await page.locator("#chart-requests svg").count() == 0
    assert "not-this-one" not in await page.content()
    # The right one is kept for the session only, never in localStorage or a cookie.
    await browser.sign_in(ADMIN)
    await page.wait_for_selector("body[data-painted]")
    await expect(message).to_be_hidden()
    assert await page.evaluate("Object.values(sessionStorage)") == [ADMIN]
    assert await page.evaluate("localStorage.length") == 0
    assert await page.evaluate("document.cookie") == ""
    assert await page.input_value("#admin-key") == ""
    # Forgotten: the page starts over, and asks again.
    await page.click("#forget")
    await expect(message).to_contain_text("401")
    assert await page.evaluate("sessionStorage.length") == 0
    assert await page.locator("#chart-requests svg").count() == 0
    assert browser.script_errors(401, 404) == []


async def test_the_page_fits_a_phone_and_works_with_a_keyboard(
    server: TestServer, chromium: Callable[..., Any]
) -> None:
    request_id = await transcribe(server)
    await logged(server, request_id)
    browser = await chromium(server, width=390)
    page = browser.page
    # Asked for the key, the focus is in its field: typed, and Enter.
    await expect(page.locator("#auth-message")).to_contain_text("401")
    assert await page.evaluate("document.activeElement.id") == "admin-key"
    await page.keyboard.type(ADMIN)
    await page.keyboard.press("Enter")
    await page.wait_for_selector("body[data-painted]")
    # Tab order: the skip link, the sections, the key, then the charts' controls.
    await page.focus(".skip")
    order = []
    for _ in range(10):
        await page.keyboard.press("Tab")
        order.append(
            await page.evaluate(
                "document.activeElement.id || document.activeElement.textContent.trim()"
            )
        )
    assert order == [
        *("Usage", "Budgets", "Requests", "Keys"),
        *("admin-key", "Use this key", "forget"),
        *("range", "group-by", "refresh"),
    ]
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    assert await page.locator("#chart-requests .bars rect").count() > 0
    # Every control has a label; every chart a text alternative; tables are labelled.
    unlabelled = await page.evaluate(
        """[...document.querySelectorAll('input, select')]
            .filter((el) => !el.labels || el.labels.length === 0).map((el) => el.id)"""
    )
    assert unlabelled == []
    labels = await page.eval_on_selector_all(
        ".chart svg",
        "(svgs) => svgs.map((svg) => [svg.getAttribute('role'), svg.getAttribute('aria-label')])",
    )
    assert len(labels) == 4
    assert all(role == "img" and label for role, label in labels)
    untitled = await page.evaluate(
        """[...document.querySelectorAll('table')].filter((t) =>
            !t.caption && !t.getAttribute('aria-labelledby')).map((t) => t.id)"""
    )
    assert untitled == []
    # The detail opens from the keyboard and closes with Escape.
    await page.locator(f'#logs-table tr[data-id="{request_id}"] button').focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#detail-attempts")).to_contain_text("1 attempt (0 retries)")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await page.keyboard.press("Escape")
    await expect(page.locator("#detail")).to_be_hidden()
    assert browser.script_errors(401, 404) == []


async def test_without_the_governance_api_budgets_and_keys_say_not_available(
    server: TestServer, chromium: Callable[..., Any]
) -> None:
    browser = await chromium(server)
    page = browser.page

    async def absent(route: Any) -> None:
        # What a proxy without the governance API answers: its 404 for any unknown path.
        async with aiohttp.ClientSession() as session:
            unknown = f"{base_url(server)}/api/no-such-endpoint"
            async with session.get(unknown) as response:
                await route.fulfill(
                    status=response.status,
                    body=await response.read(),
                    content_type=response.content_type,
                )

    await page.route("**/api/governance/**", absent)
    await browser.sign_in(ADMIN)
    await page.wait_for_selector("body[data-painted]")
    await expect(page.locator("#budgets-status")).to_contain_text("not available")
    await expect(page.locator("#keys-status")).to_contain_text("cannot be managed")
    assert await page.is_disabled("#create-key button[type=submit]")
    # The rest of the page works all the same.
    assert await page.locator("#auth-message").is_hidden()
    assert browser.script_errors(401, 404) == []


async def test_a_key_created_on_the_page_is_shown_once_and_authenticates(
    server: TestServer, chromium: Callable[..., Any]
) -> None:
    if not has_governance_api(server):
        pytest.skip(
            "the governance API (proxy/api/governance.py, /api/governance/virtual-keys) is "
            "not registered in proxy/app.py yet"
        )
    browser = await chromium(server)
    page = browser.page
    await browser.sign_in(ADMIN)
    await page.wait_for_selector("body[data-painted]")
    # The config file's key is listed, read-only.
    await expect(page.locator('#keys-table tr[data-id="team-a"]')).to_contain_text("read-only")
    # Refused input is said next to its field, and nothing is made.
    await page.fill("#k-id", "made-on-the-page")
    await page.fill("#k-budget", "no-such-budget")
    await page.fill("#k-provider-0", "openai")
    await page.click("#create-key button[type=submit]")
    await expect(page.locator("#k-budget-error")).to_contain_text("no-such-budget")
    await expect(page.locator("#new-key")).to_be_hidden()
    await page.fill("#k-budget", "monthly")
    await page.click("#create-key button[type=submit]")
    await expect(page.locator("#new-key")).to_be_visible()
    await expect(page.locator("#k-budget-error")).to_be_hidden()
    value = await page.locator("#new-key-value").inner_text()
    assert value.startswith("sk-bf-")
    await page.click("#copy-key")
    assert await page.evaluate("navigator.clipboard.readText()") == value
    await expect(page.locator('#keys-table tr[data-id="made-on-the-page"]')).to_have_count(1)
    # The value is on the page once, and nowhere else.
    storage = await page.evaluate("JSON.stringify([Object.values(sessionStorage), localStorage])")
    assert value not in storage
    assert await page.locator("#keys-table").inner_text() != value
    assert value not in await page.locator("#keys-table").inner_text()
    await page.click("#dismiss-key")
    assert value not in await page.content()
    # The key works.
    request_id = await transcribe(server, key=value)
    await logged(server, request_id)
    # Rotated from the page (a second click confirms): the new value once, the old refused.
    rotate = page.locator('#keys-table tr[data-id="made-on-the-page"] button', has_text="Rotate")
    await rotate.click()
    await expect(rotate).to_have_text("Confirm rotate")
    # Armed, then left: it disarms, so a stray click later does not rotate.
    await rotate.blur()
    await expect(rotate).to_have_text("Rotate")
    await rotate.click()
    await expect(rotate).to_have_text("Confirm rotate")
    await rotate.click()
    await expect(page.locator("#new-key-title")).to_have_text("New value of made-on-the-page")
    rotated = await page.locator("#new-key-value").inner_text()
    assert rotated.startswith("sk-bf-")
    assert rotated != value
    status, _, _ = await post(
        server, form(("model", "whisper-1"), ("file", b"RIFF")), {"x-bf-vk": value}
    )
    assert status == 401
    await page.click("#dismiss-key")
    value = rotated
    await transcribe(server, key=value)
    # Deactivated from the page: refused from then on.
    await page.click('#keys-table tr[data-id="made-on-the-page"] button:text("Deactivate")')
    active = page.locator('#keys-table tr[data-id="made-on-the-page"] td').first
    await expect(active).to_have_text("no")
    for _ in range(100):
        status, _, _ = await post(
            server, form(("model", "whisper-1"), ("file", b"RIFF")), {"x-bf-vk": value}
        )
        if status == 403:
            break
        await asyncio.sleep(0.02)
    assert status == 403
    assert browser.script_errors(400, 401) == []  # the load before the key; the refused create
