"""Azure OpenAI: the same form, posted to a deployment with an ``api-key`` header."""

from __future__ import annotations

import re
from urllib.parse import quote

from ..config import KeyConfig
from ..errors import InvalidRequestError
from ..models import TASK_PATHS, Task
from .http import HttpProvider, websocket_url

#: What an Azure deployment id may be (README, "Security"). It goes into the
#: upstream's URL path: ``..``, ``/`` or ``%2F`` there would take our key to
#: another path of the resource, so only what Azure itself allows is let through.
DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: How much of a refused id is quoted back: enough to recognise it.
_QUOTED_CHARS = 80


def is_deployment_id(value: str) -> bool:
    """Whether ``value`` may name an Azure deployment (never ``.``, ``..`` or a path)."""
    return DEPLOYMENT_ID.fullmatch(value) is not None


def check_deployment_id(value: str, *, param: str = "deployment_id") -> str:
    """``value``, if it may name an Azure deployment; otherwise a 400 naming ``param``,
    the field it came from (the path's ``deployment_id``, or ``model``)."""
    if not is_deployment_id(value):
        raise InvalidRequestError(
            f"{value[:_QUOTED_CHARS]!r} is not an Azure deployment id: "
            f"one must match {DEPLOYMENT_ID.pattern}",
            code="invalid_deployment_id",
            param=param,
        )
    return value


class AzureProvider(HttpProvider):
    """``POST {endpoint}/openai/deployments/{deployment}/audio/transcriptions?api-version=``
    (and ``.../audio/translations``);
    realtime sessions on Azure's own Realtime API.

    The endpoint, the deployment names and the API version come from the
    key's ``azure_key_config``; a model with no deployment listed is taken
    to be the deployment's own name.
    """

    #: Azure's transcription deployments answer whole (README, "Providers, retries and fallbacks").
    streams = False

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
        # Checked when the request's routes were planned; checked again here,
        # where it is put in the path, whatever way it came. Its characters
        # need no quoting.
        deployment = check_deployment_id(azure.deployments.get(model, model))
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
            deployment = check_deployment_id(azure.deployments.get(model, model))
            version = quote(azure.api_version, safe="")
            url = (
                f"{base}/openai/realtime?api-version={version}"
                f"&intent=transcription&deployment={deployment}"
            )
        else:
            url = f"{base}/openai/v1/realtime?intent=transcription"
        return url, {"api-key": key.value}
