"""Time, injected. Whatever reads the time takes a `Clock`; services use `SystemClock`,
tests a `ManualClock` that they advance instead of sleeping.

Wall time (Unix ms UTC), because leases, expiries and records are stored and compared
across processes and restarts.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Unix time in ms UTC."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to. Starts at `start_ms` (default: the real
    time at construction, so that values look like today's)."""

    def __init__(self, start_ms: int | None = None) -> None:
        self._now_ms = SystemClock().now_ms() if start_ms is None else start_ms

    def now_ms(self) -> int:
        return self._now_ms

    def advance(self, ms: int) -> None:
        """Move forward by `ms` (>= 0)."""
        if ms < 0:
            raise ValueError(f"a clock only moves forward, got {ms} ms")
        self._now_ms += ms


SYSTEM = SystemClock()
