"""The caption page: one static page at ``GET /``, its script and style under ``/ui/``.

Plain HTML, CSS and JavaScript shipped in the package, no build step and
nothing from elsewhere (the Content-Security-Policy says so to the browser).
``proxy.web_ui: false`` leaves it out.
"""

from __future__ import annotations

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
_HEADERS = {
    # Only this origin's own files and connections (the microphone's WebSocket
    # included); media from the microphone stay in the page.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_web_ui(app: web.Application) -> None:
    """Serve the caption page and its two files, read once at start."""
    for path, (name, content_type) in _FILES.items():
        body = (WEB_DIR / name).read_bytes()
        app.router.add_get(path, _serving(body, content_type))


def _serving(body: bytes, content_type: str) -> Handler:
    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_HEADERS)

    return serve
