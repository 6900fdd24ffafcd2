"""The app's open store, under a typed key: what keeps its state there (the request log,
governance at run time) finds it here rather than opening another."""

from __future__ import annotations

from aiohttp import web

from .engine import Store

#: Set while the app runs, once the store is open (absent with ``logs.enabled: false``).
STORE_KEY = web.AppKey("store", Store)
