"""Azure OpenAI: the same form, posted to a deployment with an ``api-key`` header."""

from __future__ import annotations

from urllib.parse import quote

from ..config import KeyConfig
from ..models import TASK_PATHS, Task
from .http import HttpProvider, websocket_url


class AzureProvider(HttpProvider):
    """``POST {endpoint}/openai/deployments/{deployment}/audio/transcriptions?api-version=``
    (and ``.../audio/translations``);
    realtime sessions on Azure's own Realtime API.

    The endpoint, the deployment names and the API version come from the
    key's ``azure_key_config``; a model with no deployment listed is taken
    to be the deployment's own name.
    """

    def deployment_of(self, model: str) -> str:
        for key in self._config.keys:
            if key.azure is not None and model in key.azure.deployments:
                return key.azure.deployments[model]
        return model

    def target(
        self, model: str, key: KeyConfig | None, task: Task = "transcription"
    ) -> tuple[str, dict[str, str]]:
        # The config loader refuses an Azure provider without keys or endpoint.
        assert key is not None
        azure = key.azure
        assert azure is not None
        deployment = quote(azure.deployments.get(model, model), safe="")
        url = (
            f"{azure.endpoint}/openai/deployments/{deployment}/{TASK_PATHS[task]}"
            f"?api-version={quote(azure.api_version, safe='')}"
        )
        return url, {"api-key": key.value}

    def realtime_target(self, model: str, key: KeyConfig | None) -> tuple[str, dict[str, str]]:
        """Azure's GA ``/openai/v1/realtime?intent=transcription``; where the key's
        ``api_version`` is a preview, the preview form with it and the deployment."""
        assert key is not None
        azure = key.azure
        assert azure is not None
        base = websocket_url(azure.endpoint)
        if "preview" in azure.api_version:
            deployment = quote(azure.deployments.get(model, model), safe="")
            version = quote(azure.api_version, safe="")
            url = (
                f"{base}/openai/realtime?api-version={version}"
                f"&intent=transcription&deployment={deployment}"
            )
        else:
            url = f"{base}/openai/v1/realtime?intent=transcription"
        return url, {"api-key": key.value}
