"""Virtual keys, rate limits and budgets in the config file's shape, for the governance API.

A request's body is read by the config file's own readers
(:func:`~proxy.config.loading.rate_limit_of` and the others), so the API takes
exactly what the file takes, and more strictly: a field the file would ignore
with a warning is a 400 here, and ``"env.NAME"`` reads nothing from the
environment. What is kept is the shape those readers' result renders to
(:func:`rate_limit_spec` and the others): the same for an entry made through the
API and for one read from the file, so both are listed alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from ..config import BudgetConfig, ConfigError, RateLimitConfig, VirtualKeyConfig
from ..config.loading import budget_of, rate_limit_of, virtual_key_of
from ..config.sections import Section
from ..errors import InvalidRequestError

#: What an id may be: it is part of URLs, log rows and Redis counter names.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: What a supplied key value may be: the prefix, and enough characters that its unsalted
#: digest gives nothing away (a generated one has 43 of them).
VALUE_PATTERN = re.compile(r"sk-bf-[A-Za-z0-9._~+/=-]{26,250}")

_T = TypeVar("_T")

_UNITS = (("Y", 31536000), ("M", 2592000), ("w", 604800), ("d", 86400), ("h", 3600), ("m", 60))


def check_id(value: object, param: str = "id") -> str:
    """``value`` as an id, or a 400 naming ``param``."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidRequestError(
            f"{param}: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            param=param,
            code="invalid_id",
        )
    return value


def check_value(value: object) -> str:
    """A virtual key's value supplied by the client, or a 400."""
    if not isinstance(value, str) or not VALUE_PATTERN.fullmatch(value):
        raise InvalidRequestError(
            "value: sk-bf- and then 26 to 250 letters, digits or -._~+/= (leave it out to "
            "have one generated)",
            param="value",
            code="invalid_value",
        )
    return value


def read_rate_limit(body: dict[str, Any]) -> RateLimitConfig:
    """A rate limit from a request's body (with its ``id``), or a 400 naming the field."""
    return _read(body, rate_limit_of)


def read_budget(body: dict[str, Any]) -> BudgetConfig:
    """A budget from a request's body (with its ``id``), or a 400 naming the field."""
    return _read(body, budget_of)


def read_virtual_key(
    body: dict[str, Any],
    providers: Collection[str],
    rate_limits: Mapping[str, RateLimitConfig],
    budgets: Mapping[str, BudgetConfig],
) -> VirtualKeyConfig:
    """A virtual key from a request's body (with its ``id`` and ``value``), naming only
    ``providers`` served here and ``rate_limits`` and ``budgets`` that exist, or a 400
    naming the field."""
    key = _read(body, lambda item: virtual_key_of(item, rate_limits, budgets))
    for index, name in enumerate(_provider_names(body)):
        if name not in providers:
            raise InvalidRequestError(
                f"provider_configs[{index}].provider: no provider {name!r} is served here "
                f"(there are {', '.join(sorted(providers)) or 'none'})",
                param=f"provider_configs[{index}].provider",
                code="unknown_provider",
            )
    return key


def stored_key(
    key_id: str,
    spec: Mapping[str, Any],
    rate_limits: Mapping[str, RateLimitConfig],
    budgets: Mapping[str, BudgetConfig],
) -> VirtualKeyConfig:
    """A stored key's spec read back (its value is known by digest only). Raises
    :class:`ConfigError` when what it names is gone."""
    item = Section("", {**spec, "id": key_id, "value": "stored as a digest"}, {})
    return replace(virtual_key_of(item, rate_limits, budgets), value="")


def stored_rate_limit(limit_id: str, spec: Mapping[str, Any]) -> RateLimitConfig:
    """A stored rate limit's spec read back."""
    return rate_limit_of(Section("", {**spec, "id": limit_id}, {}))


def stored_budget(budget_id: str, spec: Mapping[str, Any]) -> BudgetConfig:
    """A stored budget's spec read back."""
    return budget_of(Section("", {**spec, "id": budget_id}, {}))


def rate_limit_spec(limit: RateLimitConfig) -> dict[str, Any]:
    """``limit`` in the config file's shape, without its id."""
    return {
        "request_max_limit": limit.request_max_limit,
        "request_reset_duration": duration_text(limit.request_reset_s),
        "audio_seconds_max_limit": limit.audio_seconds_max_limit,
        "audio_seconds_reset_duration": duration_text(limit.audio_seconds_reset_s),
    }


def budget_spec(budget: BudgetConfig) -> dict[str, Any]:
    """``budget`` in the config file's shape, without its id."""
    return {
        "max_limit": budget.max_limit,
        "reset_duration": duration_text(budget.reset_s),
        "unit": budget.unit,
    }


def key_spec(key: VirtualKeyConfig) -> dict[str, Any]:
    """``key`` in the config file's shape, without its id and value."""
    return {
        "is_active": key.is_active,
        "provider_configs": [
            {"provider": provider, "allowed_models": list(models)}
            for provider, models in key.allowed.items()
        ],
        "rate_limit_id": key.rate_limit.id if key.rate_limit is not None else None,
        "budget_id": key.budget.id if key.budget is not None else None,
    }


def duration_text(seconds: float) -> str:
    """``seconds`` as a config file's duration: in the largest unit it is a whole number of."""
    for unit, size in _UNITS:
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    # Exactly as read: "%g" would round 1234567 s to 1.23457e+06 s.
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{float(seconds)!r}s"


def _read(body: dict[str, Any], read: Callable[[Section], _T]) -> _T:
    """``body`` read by a config file's reader: its errors and any field it did not ask
    for are a 400 naming the field."""
    # No environment: "env.NAME" in a request must not read the server's secrets.
    section = Section("", body, {})
    try:
        found = read(section)
    except ConfigError as exc:
        raise InvalidRequestError(str(exc), param=exc.path, code="invalid_value") from None
    unknown = section.unknown()
    if unknown:
        raise InvalidRequestError(
            f"{unknown[0]}: not a field of this shape", param=unknown[0], code="unknown_field"
        )
    return found


def _provider_names(body: Mapping[str, Any]) -> list[str]:
    """The providers a key's body names, in order (already checked to be strings)."""
    configs = body.get("provider_configs") or []
    return [config["provider"] for config in configs]
