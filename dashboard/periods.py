"""Periods and windows as the page and the reports name them: `15m`, `1h`, `6h`, `24h`,
`7d` (a number and a unit: s, m, h, d), and the settlement month `YYYY-MM`."""

from __future__ import annotations

import re
import time

from core.errors import InvalidArgument

_DURATION = re.compile(r"([1-9][0-9]{0,5})([smhd])")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
MAX_MS = 366 * 86_400_000
DEFAULT_PERIOD = "1h"


def duration_ms(text: str, *, field: str = "period") -> int:
    """`1h` -> 3600000; InvalidArgument naming `field` unless NUMBER+UNIT (s, m, h, d) up
    to a year."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise InvalidArgument(f"{field} must be a number and a unit (s, m, h, d), got {text!r}")
    value = int(match[1]) * _UNIT_MS[match[2]]
    if value > MAX_MS:
        raise InvalidArgument(f"{field} must be at most 366d, got {text!r}")
    return value


def step_for(window_ms: int, points: int = 60) -> int:
    """A step that cuts `window_ms` into about `points` buckets, in whole seconds, at
    least 10 s."""
    return max(10_000, (window_ms // points) // 1000 * 1000)


def month_of(now_ms: int | None = None) -> str:
    """The settlement period (UTC month) that holds `now_ms` (default: now)."""
    seconds = time.time() if now_ms is None else now_ms / 1000
    return time.strftime("%Y-%m", time.gmtime(seconds))
