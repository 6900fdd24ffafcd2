"""What a caller may do: which providers and models, how often, how much.

Limits are reserved before a request goes upstream and settled when its
audio length is known, so concurrent requests cannot overshoot a limit by
more than what is in flight.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import GovernanceConfig, ModelPrice, VirtualKeyConfig
from ..errors import (
    BudgetExceededError,
    PermissionDeniedError,
    ProxyError,
    RateLimitedError,
    store_unreachable,
)
from ..metrics import Metrics
from ..models import TokenUsage
from ..router import Route
from .counters import Counters, CounterStoreError
from .credentials import Caller

#: What a second of speech comes to for a model priced by the token, to reserve
#: a budget before the answer says (OpenAI's audio input runs about 10 tokens a
#: second; speech about 3 text tokens). Settled on the answer's own count.
AUDIO_TOKENS_PER_S = 10.0
TEXT_TOKENS_PER_S = 3.0

log = logging.getLogger(__name__)


@dataclass
class AudioReservation:
    """A counter that audio seconds are taken from: an audio-second limit or a budget."""

    name: str
    #: In the counter's units (seconds, or money).
    reserved: float
    maximum: float
    window: float
    #: Counter units per audio second.
    rate: float
    #: What the caller is told when the counter is spent.
    refusal: type[ProxyError]
    message: str
    #: Audio seconds already charged at an earlier rate (a session that changed model).
    base_seconds: float = 0.0
    #: A budget's model price when it is by the token: settled on the answer's tokens.
    token_price: ModelPrice | None = None

    def used(self, audio_seconds: float, tokens: TokenUsage | None) -> float:
        """What a request that used ``audio_seconds`` (and ``tokens``) takes from the counter."""
        if self.token_price is not None and tokens is not None and not self.base_seconds:
            return token_cost(self.token_price, tokens)
        return max(0.0, audio_seconds - self.base_seconds) * self.rate


def token_cost(price: ModelPrice, tokens: TokenUsage) -> float:
    """USD for ``tokens`` at ``price`` (USD per million tokens of each kind)."""
    return (
        tokens.input_audio * price.input_audio_tokens
        + tokens.input_text * price.input_text_tokens
        + tokens.output_text * price.output_text_tokens
    ) / 1e6


@dataclass
class Admission:
    """What a request reserved, to be settled when it ends."""

    key: VirtualKeyConfig | None = None
    #: The counters still to be settled by audio seconds.
    by_audio: list[AudioReservation] = field(default_factory=list)
    settled: bool = False

    @property
    def reserved_seconds(self) -> float:
        """Audio seconds the reservations cover (the least of them)."""
        return min(
            (r.base_seconds + r.reserved / r.rate for r in self.by_audio if r.rate),
            default=math.inf,
        )


class Governor:
    """Applies a caller's permissions and limits."""

    def __init__(
        self,
        config: GovernanceConfig,
        counters: Counters,
        *,
        fail_open: bool,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._counters = counters
        self._fail_open = fail_open
        self._metrics = metrics

    @property
    def reserve_step_s(self) -> float:
        """Audio seconds reserved at a time: before a request's length is known, and
        ahead of its audio as it proves longer."""
        return self._config.reserve_audio_seconds

    def check_routes(self, caller: Caller, routes: Sequence[Route]) -> None:
        """403 unless the caller may use every provider and model it would be sent to."""
        key = caller.virtual_key
        if key is None:
            return
        for route in routes:
            if not key.allows(route.provider.name, route.model):
                raise PermissionDeniedError(
                    f"virtual key {key.id} may not use model {route.model} "
                    f"on provider {route.provider.name}",
                    code="model_not_allowed",
                    param="model",
                )

    def price_of(self, route: Route) -> ModelPrice | None:
        """``route``'s model's price, named as ``provider/model`` or as the model alone."""
        prices = self._config.model_prices
        return prices.get(f"{route.provider.name}/{route.model}", prices.get(route.model))

    def price_per_second(self, route: Route) -> float:
        """USD per audio second for ``route``'s model (0 when unpriced); for a model
        priced by the token, what a second of speech comes to."""
        price = self.price_of(route)
        if price is None:
            return 0.0
        if price.per_minute or not price.per_token:
            return price.per_minute / 60
        return (
            AUDIO_TOKENS_PER_S * price.input_audio_tokens
            + TEXT_TOKENS_PER_S * price.output_text_tokens
        ) / 1e6

    def _budget_rate(self, key: VirtualKeyConfig, route: Route) -> tuple[float, ModelPrice | None]:
        """What a second of ``route``'s audio takes from ``key``'s budget, and the model's
        price when it is by the token (settled on the answer's tokens)."""
        budget = key.budget
        assert budget is not None
        if budget.unit == "audio_seconds":
            return 1.0, None
        price = self.price_of(route)
        by_token = price if price is not None and price.per_token else None
        return self.price_per_second(route), by_token

    def cost_of(
        self, route: Route | None, audio_seconds: float, tokens: TokenUsage | None
    ) -> float:
        """What ``audio_seconds`` (and ``tokens``) cost on ``route``'s model, in USD: by the
        token when it is priced so and the answer said its tokens, else by the second."""
        price = self.price_of(route) if route is not None else None
        if route is None or price is None:
            return 0.0
        if price.per_token and tokens is not None:
            return token_cost(price, tokens)
        return audio_seconds * self.price_per_second(route)

    async def count_request(self, caller: Caller) -> None:
        """Count a request that carries no audio (a client secret's mint) against the
        caller's request limit, or refuse it."""
        admission = await self.admit(caller, (), reserve_s=0.0)
        await self.settle(admission, 0.0)

    async def admit(
        self,
        caller: Caller,
        routes: Sequence[Route],
        *,
        reserve_s: float | None = None,
        count_request: bool = True,
    ) -> Admission:
        """Reserve the request's share of the caller's limits, or refuse it.

        ``reserve_s`` audio seconds (``governance.reserve_audio_seconds`` when not
        given) are reserved at the highest price among ``routes``: whichever of them
        ends up serving, the reservation covers it (README, "Security").
        """
        key = caller.virtual_key
        admission = Admission(key=key)
        if key is None:
            return admission
        if reserve_s is None:
            reserve_s = self._config.reserve_audio_seconds
        wanted: list[tuple[str, float, float, float, ProxyError]] = []
        limit = key.rate_limit
        if count_request and limit is not None and limit.request_max_limit:
            wanted.append(
                (
                    f"rl:{key.id}:requests",
                    1,
                    limit.request_max_limit,
                    limit.request_reset_s,
                    RateLimitedError(f"virtual key {key.id} has used its requests for now"),
                )
            )
        rates: dict[str, tuple[float, ModelPrice | None]] = {}
        if limit is not None and limit.audio_seconds_max_limit and routes:
            rates[f"rl:{key.id}:audio"] = (1.0, None)
            wanted.append(
                (
                    f"rl:{key.id}:audio",
                    reserve_s,
                    limit.audio_seconds_max_limit,
                    limit.audio_seconds_reset_s,
                    RateLimitedError(f"virtual key {key.id} has used its audio seconds for now"),
                )
            )
        budget = key.budget
        if budget is not None and routes:
            rate, token_price = max(
                (self._budget_rate(key, route) for route in routes), key=lambda r: r[0]
            )
            if rate:
                rates[f"budget:{key.id}"] = (rate, token_price)
                wanted.append(
                    (
                        f"budget:{key.id}",
                        reserve_s * rate,
                        budget.max_limit,
                        budget.reset_s,
                        BudgetExceededError(f"virtual key {key.id} has spent its budget"),
                    )
                )
        taken: list[tuple[str, float, float]] = []
        try:
            for name, amount, maximum, window, refusal in wanted:
                retry_after = await self._counters.reserve(name, amount, maximum, window)
                if retry_after is not None:
                    for done_name, done_amount, done_window in taken:
                        await self._counters.adjust(done_name, -done_amount, done_window)
                    refusal.headers["Retry-After"] = str(math.ceil(retry_after))
                    raise refusal
                taken.append((name, amount, window))
        except CounterStoreError as exc:
            if self._fail_open:
                log.warning("limits not enforced: %s", exc)
                return admission
            raise store_unreachable("rate limits and budgets", "governance_unavailable") from exc
        for name, amount, maximum, window, refusal in wanted:
            if name in rates:
                rate, token_price = rates[name]
                admission.by_audio.append(
                    AudioReservation(
                        name,
                        amount,
                        maximum,
                        window,
                        rate=rate,
                        refusal=type(refusal),
                        message=refusal.message,
                        token_price=token_price,
                    )
                )
        return admission

    async def rebind(
        self, admission: Admission, caller: Caller, route: Route, seconds: float
    ) -> None:
        """A session now on ``route`` (its model changed), ``seconds`` of audio in: what it
        used is charged at the old route's rates, and the rest is reserved at the new
        one's (a model priced otherwise is charged as it is priced)."""
        fresh = await self.admit(caller, [route], count_request=False)  # refused: no change
        await self.settle(admission, seconds)
        for reservation in fresh.by_audio:
            reservation.base_seconds = seconds
        admission.by_audio = fresh.by_audio
        admission.settled = False

    async def extend(self, admission: Admission, seconds: float) -> None:
        """Reserve ``seconds`` more audio on each of the admission's counters (a session
        that goes on), or raise what the caller is told when one is spent."""
        taken: list[tuple[AudioReservation, float]] = []
        try:
            for reservation in admission.by_audio:
                amount = seconds * reservation.rate
                retry_after = await self._counters.reserve(
                    reservation.name, amount, reservation.maximum, reservation.window
                )
                if retry_after is not None:
                    for done, done_amount in taken:
                        await self._counters.adjust(done.name, -done_amount, done.window)
                        done.reserved -= done_amount
                    raise reservation.refusal(
                        reservation.message,
                        headers={"Retry-After": str(math.ceil(retry_after))},
                    )
                reservation.reserved += amount
                taken.append((reservation, amount))
        except CounterStoreError as exc:
            if self._fail_open:
                log.warning("limits not enforced for the rest of a session: %s", exc)
                admission.by_audio.clear()  # not asked again on every append
                return
            raise store_unreachable("rate limits and budgets", "governance_unavailable") from exc

    async def settle(
        self,
        admission: Admission,
        audio_seconds: float,
        tokens: TokenUsage | None = None,
        *,
        served: Route | None = None,
    ) -> None:
        """Replace the reservations with what the request really used; a budget is
        charged at ``served``'s price when given (the route that answered), else at the
        price it was reserved at."""
        if admission.settled:
            return
        admission.settled = True
        key = admission.key
        for reservation in admission.by_audio:
            if served is not None and key is not None and reservation.name.startswith("budget:"):
                reservation.rate, reservation.token_price = self._budget_rate(key, served)
            try:
                await self._counters.adjust(
                    reservation.name,
                    reservation.used(audio_seconds, tokens) - reservation.reserved,
                    reservation.window,
                )
            except CounterStoreError as exc:
                log.warning("could not settle %s: %s", reservation.name, exc)
