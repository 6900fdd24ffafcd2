"""Request log rows for the store's tests."""

from __future__ import annotations

import time
from typing import Any

from proxy.store.log_rows import LogRow


def log_row(number: int, **fields: Any) -> LogRow:
    """A finished transcription row, ``req-<number>``, a second apart from the others;
    ``fields`` override any column."""
    values: dict[str, Any] = {
        "id": f"req-{number:05d}",
        "object": "transcription",
        "timestamp": fields.pop("timestamp", time.time() - 3600 + number),
        "provider": "openai",
        "model_requested": "whisper-1",
        "model_deployment": "whisper-1",
        "virtual_key_id": "team-a",
        "status": "success",
        "status_code": 200,
        "latency": 100 + number,
        "audio_seconds": 2.5,
        "audio_seconds_source": "answer",
        "cost": 0.00025,
    }
    values.update(fields)
    return LogRow(**values)
