"""Typed keys for application and request state."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .config import Config
from .models import RequestFacts
from .router import Router
from .upload import FormLimits

CONFIG_KEY = web.AppKey("config", Config)
LIMITS_KEY = web.AppKey("limits", FormLimits)
ROUTER_KEY = web.AppKey("router", Router)
SESSION_KEY = web.AppKey("upstream_session", aiohttp.ClientSession)
FACTS_KEY = web.RequestKey("facts", RequestFacts)
