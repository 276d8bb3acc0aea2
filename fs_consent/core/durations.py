"""Durations as people write them in a config file: ``5s``, ``1500ms``, ``24h``, ``60d``.

Units: ``ms``, ``s``, ``m`` (minutes), ``h``, ``d``, ``w`` and ``y`` (365 days).
A plain number, or a number without a unit, means seconds.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "y": 365 * 86400.0,
}

_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d|w|y)?")
_EXPECTED = "expected a duration like 5s or 1500ms"


def parse_duration(text: str | int | float) -> float:
    """Return the duration in seconds; ValueError (naming the bad value) if unreadable."""
    if isinstance(text, bool):
        raise ValueError(f"{_EXPECTED}, got {text!r}")
    if isinstance(text, (int, float)):
        seconds = float(text)
    elif isinstance(text, str):
        match = _DURATION.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"{_EXPECTED}, got {text!r}")
        seconds = float(match.group(1)) * UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"{_EXPECTED}, got {text!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{_EXPECTED} (not negative), got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The largest whole unit: 86400 -> '1d', 5 -> '5s', 1.5 -> '1500ms', 0 -> '0s'."""
    if seconds == 0:
        return "0s"
    milliseconds = round(seconds * 1000)
    if abs(milliseconds - seconds * 1000) > 1e-6 * max(1, milliseconds):  # below 1 ms
        return format(Decimal(repr(seconds)), "f") + "s"
    for unit in ("y", "w", "d", "h", "m", "s"):
        unit_ms = round(UNITS[unit] * 1000)
        if milliseconds % unit_ms == 0:
            return f"{milliseconds // unit_ms}{unit}"
    return f"{milliseconds}ms"
