"""Choosing among a provider's keys: by weight, passing over keys that were refused."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from ..config import KeyConfig
from ..errors import InvalidRequestError

#: How long a key the upstream refused (401/403) is passed over.
BENCH_SECONDS = 60.0


class KeyPool:
    """A provider's keys; a refused key rests a while unless no other key is left."""

    def __init__(
        self,
        provider: str,
        keys: Sequence[KeyConfig],
        *,
        clock: Callable[[], float] = time.monotonic,
        choose: Callable[[Sequence[int], Sequence[float]], int] | None = None,
    ) -> None:
        self._provider = provider
        self._keys = tuple(keys)
        self._clock = clock
        self._choose = choose or (lambda options, weights: random.choices(options, weights)[0])
        self._resting_until: dict[int, float] = {}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def _serving(self, model: str, named_deployment: bool = False) -> list[int]:
        serving = [i for i, key in enumerate(self._keys) if key.serves(model)]
        if not serving and named_deployment:
            # An Azure deployment route may name a deployment no key's map names
            # as a model: it is the deployment itself (README, "API"), for any
            # Azure key not limited to ``models``. On /v1 the map still rules.
            serving = [i for i, k in enumerate(self._keys) if k.azure is not None and not k.models]
        return serving

    def _rested(self, indexes: list[int]) -> list[int]:
        now = self._clock()
        return [i for i in indexes if self._resting_until.get(i, 0.0) <= now]

    def pick(self, model: str, *, named_deployment: bool = False) -> KeyConfig:
        """A key for ``model`` (an Azure deployment a path named, with
        ``named_deployment``), chosen by weight among the ones not resting."""
        serving = self._serving(model, named_deployment)
        if not serving:
            raise InvalidRequestError(
                f"model {model} is not available on provider {self._provider}",
                code="model_not_found",
                param="model",
            )
        options = self._rested(serving) or serving
        if len(options) == 1:
            return self._keys[options[0]]
        weights = [self._keys[i].weight for i in options]
        return self._keys[self._choose(options, weights)]

    def refused(self, key: KeyConfig, model: str) -> bool:
        """Rest ``key`` after the upstream refused it; whether another key is left for ``model``."""
        index = next(i for i, candidate in enumerate(self._keys) if candidate is key)
        self._resting_until[index] = self._clock() + BENCH_SECONDS
        return bool(self._rested(self._serving(model)))
