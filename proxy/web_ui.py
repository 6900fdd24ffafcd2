"""The proxy's two static pages, shipped in the package: the caption page at ``GET /``
(its script and style under ``/ui/``) and the operator's dashboard at ``GET /dashboard``
(its modules and style under ``/dashboard/``).

Plain HTML, CSS and JavaScript, no build step and nothing from elsewhere (the
Content-Security-Policy says so to the browser). ``proxy.web_ui: false`` leaves
both out. The dashboard holds no data of its own: every number on it comes from
``/api/*`` with the admin credential typed into it, so the page itself is public.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

WEB_DIR = Path(__file__).parent / "web"
_FILES = {
    "/": ("index.html", "text/html"),
    "/ui/captions.js": ("captions.js", "text/javascript"),
    "/ui/captions.css": ("captions.css", "text/css"),
    "/ui/mic-worklet.js": ("mic-worklet.js", "text/javascript"),
}
#: The dashboard's page, and every module it imports (each names the next by a relative
#: path, so they all live under ``/dashboard/``).
DASHBOARD_MODULES = ("api", "budgets", "charts", "dom", "keys", "main", "requests", "usage")
_DASHBOARD_FILES = {
    "/dashboard": ("dashboard.html", "text/html"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css"),
    **{
        f"/dashboard/dashboard.{name}.js": (f"dashboard.{name}.js", "text/javascript")
        for name in DASHBOARD_MODULES
    },
}
_COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_HEADERS = {
    # Only this origin's own files and connections (the microphone's WebSocket
    # included); media from the microphone stay in the page.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    **_COMMON_HEADERS,
}
_DASHBOARD_HEADERS = {
    # The page shows what attackers can write (model names, request ids, error
    # messages): no inline script or style runs, its calls reach this origin only,
    # no form submits anywhere (the admin key must never leave in a URL or body),
    # and no other site may frame it to trick the operator into clicking.
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    **_COMMON_HEADERS,
}


def add_web_ui(app: web.Application) -> None:
    """Serve the caption page and its files, read once at start."""
    _add_files(app, _FILES, _HEADERS)


def add_dashboard(app: web.Application) -> None:
    """Serve the dashboard's page and its modules, read once at start."""
    _add_files(app, _DASHBOARD_FILES, _DASHBOARD_HEADERS)


def _add_files(
    app: web.Application,
    files: Mapping[str, tuple[str, str]],
    headers: Mapping[str, str],
) -> None:
    for path, (name, content_type) in files.items():
        body = (WEB_DIR / name).read_bytes()
        app.router.add_get(path, _serving(body, content_type, headers))


def _serving(body: bytes, content_type: str, headers: Mapping[str, str]) -> Handler:
    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)

    return serve
