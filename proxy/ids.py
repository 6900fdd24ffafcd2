"""Ids the proxy makes: of realtime events and sessions, and of governance entries."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """A fresh id in OpenAI's style: ``event_...``, ``item_...``, ``sess_...``."""
    return f"{prefix}_{secrets.token_hex(10)}"
