"""What a realtime session uses of the application."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RealtimeSettings
from ..dispatch import Dispatcher
from ..governance.governor import Governor
from ..metrics import Metrics
from ..plugins.base import Pipeline
from ..providers.redaction import Redactor
from ..router import Router


@dataclass(frozen=True)
class SessionServices:
    """What a session uses of the application."""

    router: Router
    dispatcher: Dispatcher
    governor: Governor
    metrics: Metrics
    settings: RealtimeSettings
    #: Blots our provider keys out of what an upstream sends the client.
    redactor: Redactor
    #: The plugins around dispatch: each turn is a request through them.
    pipeline: Pipeline
