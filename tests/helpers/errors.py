"""The one error shape (README, "API"), checked whole."""

from __future__ import annotations

import re
from typing import Any

EVENT_ID = re.compile(r"evt_[0-9a-f]{32}")


def assert_error(
    document: dict[str, Any],
    *,
    status: int,
    code: str,
    param: str | None = None,
    error_type: str = "invalid_request_error",
    bifrost: bool = False,
    request_type: str = "transcription",
) -> str:
    """Check the whole error shape; return the message."""
    assert set(document) == {
        "event_id",
        "type",
        "is_bifrost_error",
        "status_code",
        "error",
        "extra_fields",
    }
    assert EVENT_ID.fullmatch(document["event_id"])
    assert document["type"] == error_type
    assert document["is_bifrost_error"] is bifrost
    assert document["status_code"] == status
    error = document["error"]
    assert error["type"] == error_type
    assert error["code"] == code
    assert error["param"] == param
    assert error["event_id"] == document["event_id"]
    assert document["extra_fields"]["request_type"] == request_type
    message = error["message"]
    assert isinstance(message, str)
    assert message
    return message
