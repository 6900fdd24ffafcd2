"""What a realtime session uses of the application."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RealtimeSettings
from ..dispatch import Dispatcher
from ..governance.governor import Governor
from ..metrics import Metrics
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
