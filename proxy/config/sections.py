"""The typed JSON reader: one section of the file at a time, each key checked for its type.

A wrong type is a :class:`ConfigError` naming the key's path; ``"env.NAME"``
strings are read from the environment; keys no one asked for are warned of.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .schema import ConfigError

log = logging.getLogger("proxy.config")


class Section:
    """One JSON object being read, remembering its path and the keys used."""

    def __init__(self, path: str, data: object, environ: Mapping[str, str]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected an object, got {_json_type(data)}")
        self.path = path
        self.environ = environ
        self._data: dict[str, Any] = data
        self._used: set[str] = set()

    def _get(self, key: str) -> object:
        self._used.add(key)
        return self._data.get(key)

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        """Whether the object has ``key`` at all."""
        return key in self._data

    def peek(self, key: str) -> object:
        """The raw value, without marking the key as used."""
        return self._data.get(key)

    def section(self, key: str) -> Section:
        """The object under ``key`` (empty when absent)."""
        value = self._get(key)
        return Section(self._where(key), {} if value is None else value, self.environ)

    def sections(self, key: str) -> list[Section]:
        """The objects of the array under ``key`` (none when absent)."""
        value = self._get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{self._where(key)}: expected an array, got {_json_type(value)}")
        where = self._where(key)
        return [Section(f"{where}[{i}]", item, self.environ) for i, item in enumerate(value)]

    def names(self) -> list[str]:
        """Every key of the object, in file order."""
        return list(self._data)

    def string(self, key: str, default: str | None = None) -> str | None:
        """A string, ``"env.NAME"`` read from the environment."""
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self._where(key)}: expected a string, got {_json_type(value)}")
        if value.startswith("env."):
            name = value[4:]
            if name not in self.environ:
                raise ConfigError(f"{self._where(key)}: environment variable {name} is not set")
            return self.environ[name]
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        """An array of strings."""
        value = self._get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self._where(key)}: expected an array of strings")
        return tuple(value)

    def boolean(self, key: str, default: bool) -> bool:
        """``true`` or ``false``."""
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(
                f"{self._where(key)}: expected true or false, got {_json_type(value)}"
            )
        return value

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        """A whole number, at least ``minimum``."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self._where(key)}: expected an integer, got {_json_type(value)}")
        if value < minimum:
            raise ConfigError(f"{self._where(key)}: must be at least {minimum}, got {value}")
        return value

    def number(self, key: str, default: float, *, positive: bool = False) -> float:
        """A number; above 0 when ``positive``."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self._where(key)}: expected a number, got {_json_type(value)}")
        if positive and value <= 0:
            raise ConfigError(f"{self._where(key)}: must be greater than 0, got {value}")
        return float(value)

    def duration(self, key: str, default: float) -> float:
        """A duration setting: a Bifrost duration string, or a number of seconds."""
        raw = self.peek(key)
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return self.number(key, default)
        value = self.string(key)
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError:
            raise ConfigError(
                f"{self._where(key)}: expected a duration such as 30s, 1m, 1h, 1d, 1w, 1M; "
                f"got {value!r}"
            ) from None

    def warn_unused(self) -> None:
        """Warn of every key no one asked for: Bifrost files have many we do not use."""
        for key in sorted(self._data.keys() - self._used):
            log.warning("config: ignoring unknown key %s", self._where(key))


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "Y": 31536000}


def parse_duration(value: str) -> float:
    """Bifrost's durations in seconds: ``30s``, ``1m``, ``1h``, ``1d``, ``1w``, ``1M``
    (30 days), ``1Y``, or a plain number of seconds. Raises ValueError."""
    value = value.strip()
    unit = value[-1:]
    number, scale = (value[:-1], _DURATION_UNITS[unit]) if unit in _DURATION_UNITS else (value, 1)
    seconds = float(number) * scale
    if not seconds >= 0 or seconds == float("inf"):  # NaN too
        raise ValueError(value)
    return seconds
