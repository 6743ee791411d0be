"""Live updates: one watcher asks the broker for its figures every `poll_s` and, when
they changed (a job started or finished, the queue moved, a round ran, the policy
changed), gives every subscriber (one per open page, over server-sent events) a new
version number. Each page then fetches what it shows. The watcher logs each change it
sees, once; an idle federation writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import IcxError

log = logging.getLogger("icx.dashboard")

# What a change is made of: these totals, the latest round and the policy's version.
WATCHED = ("jobs_running", "jobs_done", "queue_length", "devices_busy", "centers_live")


@dataclass(slots=True)
class Pulse:
    """The figures the watcher compares between polls."""

    totals: dict[str, int]
    round_number: int
    policy_version: int

    def changes(self, before: Pulse) -> list[str]:
        out = [
            f"{name} {before.totals.get(name, 0)} -> {value}"
            for name, value in self.totals.items()
            if before.totals.get(name, 0) != value
        ]
        if self.policy_version != before.policy_version:
            out.append(f"policy version {before.policy_version} -> {self.policy_version}")
        return out


@dataclass(slots=True)
class Watcher:
    """Polls `read_pulse`; `version` grows by one on each change; `wait_newer(v)` returns
    once it is past v."""

    read_pulse: Callable[[], Awaitable[Pulse]]
    poll_s: float = 1.0
    # Called on each change before the subscribers hear of it (to drop stale answers).
    on_change: Callable[[], None] | None = None
    version: int = 0
    last: Pulse | None = None
    error: str = ""
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.poll_s)

    async def poll_once(self) -> None:
        try:
            pulse = await self.read_pulse()
        except IcxError as exc:
            if str(exc) != self.error:  # logged when it starts failing, not every poll
                log.warning("cannot read the broker's figures: %s", exc)
                self.error = str(exc)
            return
        if self.error:
            log.info("the broker's figures can be read again")
            self.error = ""
        if self.last is not None and pulse == self.last:
            return
        if self.last is not None:
            changed = pulse.changes(self.last)
            if changed:
                log.info("figures changed: %s", ", ".join(changed))
            else:  # a round that moved nothing (jobs that cannot be placed): not worth a line
                log.debug("matching round %d", pulse.round_number)
        self.last = pulse
        if self.on_change is not None:
            self.on_change()
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

    async def wait_newer(self, version: int, timeout_s: float) -> int:
        """The version once it is past `version`, or as it is after `timeout_s`."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.version > version), timeout_s
                )
            return self.version


def pulse_of(overview: dict[str, Any], round_number: int, policy_version: int) -> Pulse:
    totals = overview.get("totals", {})
    return Pulse(
        totals={name: int(totals.get(name, 0)) for name in WATCHED},
        round_number=round_number,
        policy_version=policy_version,
    )
