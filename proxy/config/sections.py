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
            raise ConfigError(f"{path}: expected an object, got {_json_type(data)}", path=path)
        self.path = path
        self.environ = environ
        self._data: dict[str, Any] = data
        self._used: set[str] = set()
        #: The objects read under this one, for :meth:`unknown`.
        self._children: list[Section] = []

    def _get(self, key: str) -> object:
        self._used.add(key)
        return self._data.get(key)

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> ConfigError:
        """The error of ``key``'s value: ``message`` after the key's path."""
        where = self._where(key)
        return ConfigError(f"{where}: {message}", path=where)

    def has(self, key: str) -> bool:
        """Whether the object has ``key`` at all."""
        return key in self._data

    def peek(self, key: str) -> object:
        """The raw value, without marking the key as used."""
        return self._data.get(key)

    def section(self, key: str) -> Section:
        """The object under ``key`` (empty when absent)."""
        value = self._get(key)
        child = Section(self._where(key), {} if value is None else value, self.environ)
        self._children.append(child)
        return child

    def sections(self, key: str) -> list[Section]:
        """The objects of the array under ``key`` (none when absent)."""
        value = self._get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"expected an array, got {_json_type(value)}")
        where = self._where(key)
        items = [Section(f"{where}[{i}]", item, self.environ) for i, item in enumerate(value)]
        self._children += items
        return items

    def names(self) -> list[str]:
        """Every key of the object, in file order."""
        return list(self._data)

    def string(self, key: str, default: str | None = None) -> str | None:
        """A string, ``"env.NAME"`` read from the environment."""
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_json_type(value)}")
        if value.startswith("env."):
            name = value[4:]
            if name not in self.environ:
                raise self.error(key, f"environment variable {name} is not set")
            return self.environ[name]
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        """An array of strings."""
        value = self._get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "expected an array of strings")
        return tuple(value)

    def boolean(self, key: str, default: bool) -> bool:
        """``true`` or ``false``."""
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_json_type(value)}")
        return value

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        """A whole number, at least ``minimum``."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_json_type(value)}")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return value

    def number(
        self, key: str, default: float, *, positive: bool = False, minimum: float | None = None
    ) -> float:
        """A number; above 0 when ``positive``, at least ``minimum`` when given."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {_json_type(value)}")
        if positive and value <= 0:
            raise self.error(key, f"must be greater than 0, got {value}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum:g}, got {value}")
        return float(value)

    def duration(self, key: str, default: float, *, window: bool = False) -> float:
        """A duration setting: a Bifrost duration string, or a number of seconds (never
        negative; from 1 s to 10 years when it is a ``window``'s length, which counters
        are kept for and reset at: a shorter one counts nothing, and a longer one is a
        typo that would overflow what is computed of it)."""
        raw = self.peek(key)
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            seconds = self.number(key, default, minimum=0)
            shown = f"{raw!r}"
        else:
            value = self.string(key)
            if value is None:
                return default
            try:
                seconds = parse_duration(value)
            except ValueError:
                raise self.error(
                    key, f"expected a duration such as 30s, 1m, 1h, 1d, 1w, 1M; got {value!r}"
                ) from None
            shown = repr(value)
        if window and not WINDOW_MIN_S <= seconds <= WINDOW_MAX_S:  # NaN too
            raise self.error(key, f"must be from 1s to 10Y, got {shown}")
        return seconds

    def unknown(self, *, nested: bool = True) -> list[str]:
        """The paths of every key no one asked for, here and (``nested``) in the objects
        read under this one: what an API that takes this shape refuses."""
        here = [self._where(key) for key in sorted(self._data.keys() - self._used)]
        if not nested:
            return here
        return here + [path for child in self._children for path in child.unknown()]

    def warn_unused(self, *, nested: bool = False) -> None:
        """Warn of every key no one asked for: Bifrost files have many we do not use."""
        for path in self.unknown(nested=nested):
            log.warning("config: ignoring unknown key %s", path)


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


#: The shortest and longest window a rate limit or budget may have.
WINDOW_MIN_S = 1.0
WINDOW_MAX_S = 10 * 31536000.0

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
