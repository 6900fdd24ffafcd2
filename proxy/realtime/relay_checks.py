"""A relayed session's updates, checked before they go upstream, their models pinned.

Every model an update names, wherever it names it, is rewritten to the
deployment that serves it, and pinned: a model the caller's key may not
use, or one another provider serves, is refused. So are another session
type than transcription (a conversation would answer in tokens and audio
the proxy does not meter), transcription settings in both dialects' shapes
at once, and an input format whose audio cannot be counted.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequestError
from ..governance.credentials import Caller
from ..governance.governor import Governor
from ..providers.base import Provider
from ..router import Router
from .client_events import ClientEventError
from .input_rate import requested_rate
from .protocol import SESSION_UPDATE
from .session_config import check_session_type

#: Where each dialect puts an update's transcription settings.
_GA_TRANSCRIPTION = "session.audio.input.transcription"
_BETA_TRANSCRIPTION = "session.input_audio_transcription"


class UpdateCheck:
    """What a relayed session's updates may ask for: its provider's models the caller may
    use, in one shape, in a format that is metered."""

    def __init__(
        self,
        router: Router,
        governor: Governor,
        caller: Caller,
        provider: Provider,
        *,
        azure_deployment: bool = False,
    ) -> None:
        self._router = router
        self._governor = governor
        self._caller = caller
        self._provider = provider
        #: The session's models name Azure deployments (Azure's URL form).
        self._azure_deployment = azure_deployment

    def checked(self, event: dict[str, Any]) -> int | None:
        """Check a session update and rewrite the models it names (in ``event``); the
        bytes per second of the format it asks for (None: it names none). Raises what
        the client is told when the update is refused."""
        session = event.get("session")
        if not isinstance(session, dict):
            return None  # nothing to check: the upstream says what is wrong with it
        if event.get("type") == SESSION_UPDATE:  # the beta update has no session type
            check_session_type(session)
        _check_transcription_shape(session)
        for container, param in _models_named(session):
            model = container["model"]
            if not isinstance(model, str):
                raise ClientEventError("model must be a string", param=param)
            container["model"] = self._pinned(model, param)
        return requested_rate(session)

    def _pinned(self, model: str, param: str) -> str:
        """The deployment ``model`` is sent upstream as; refused unless the session's
        provider serves it and the caller may use it."""
        router = self._router
        route = router.azure_deployment(model) if self._azure_deployment else router.resolve(model)
        if route.provider is not self._provider:
            raise InvalidRequestError(
                f"a relayed session stays on provider {self._provider.name}: "
                f"model {model} is served by {route.provider.name}",
                code="model_not_on_this_session",
                param=param,
            )
        self._governor.check_routes(self._caller, [route])
        return route.provider.deployment_of(route.model)


def _check_transcription_shape(session: dict[str, Any]) -> None:
    """Refuse transcription settings given in both dialects' shapes at once: which of
    them the upstream would take is its own affair, and the one checked must be the
    one used."""
    audio = session.get("audio")
    inputs = audio.get("input") if isinstance(audio, dict) else None
    ga = isinstance(inputs, dict) and inputs.get("transcription") is not None
    if ga and session.get("input_audio_transcription") is not None:
        raise ClientEventError(
            f"transcription settings are given twice, as {_GA_TRANSCRIPTION} and as "
            f"{_BETA_TRANSCRIPTION}: send one of them",
            param=_BETA_TRANSCRIPTION,
        )


def _models_named(session: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """Every object in ``session`` with a ``model`` field, however deep, and the field's
    path: any model an update names is one the upstream may use. (Walked with a stack
    of its own: JSON nests deeper than Python recurses.)"""
    found: list[tuple[dict[str, Any], str]] = []
    containers: list[tuple[object, str]] = [(session, "session")]
    while containers:
        value, where = containers.pop()
        if isinstance(value, dict):
            if "model" in value:
                found.append((value, f"{where}.model"))
            containers.extend(
                (item, f"{where}.{key}")
                for key, item in value.items()
                if isinstance(item, dict | list)
            )
        elif isinstance(value, list):
            containers.extend(
                (item, f"{where}[{index}]")
                for index, item in enumerate(value)
                if isinstance(item, dict | list)
            )
    return found
