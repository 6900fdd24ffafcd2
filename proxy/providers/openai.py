"""OpenAI's transcription API and every server compatible with it.

Groq, vLLM, speaches and LocalAI differ from OpenAI only in their base URL and
key, so this one adapter serves them all.
"""

from __future__ import annotations

from ..config import KeyConfig
from ..models import TASK_PATHS, Task
from .http import HttpProvider, websocket_url


class OpenAICompatibleProvider(HttpProvider):
    """``POST {base_url}/v1/audio/transcriptions`` (and ``.../translations``) with a Bearer
    key; realtime sessions at
    ``{base_url}/v1/realtime?intent=transcription`` (a WebSocket)."""

    def target(
        self, model: str, key: KeyConfig | None, task: Task = "transcription"
    ) -> tuple[str, dict[str, str]]:
        headers = {"Authorization": f"Bearer {key.value}"} if key else {}
        return f"{self.network.base_url}/v1/{TASK_PATHS[task]}", headers

    def realtime_target(self, model: str, key: KeyConfig | None) -> tuple[str, dict[str, str]]:
        headers = {"Authorization": f"Bearer {key.value}"} if key else {}
        return f"{websocket_url(self.network.base_url)}/v1/realtime?intent=transcription", headers
