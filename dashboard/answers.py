"""The dashboard's answers, shared between requests: each JSON answer the page asks for is
computed once (one broker call however many pages ask at the same moment), serialized
once, compressed once, and served from memory until it is too old or the figures change.

An answer is kept for `max_age_s` of its period (a 24-hour figure moves little in a
minute; the watcher's change clears everything anyway): the period divided by
`PERIOD_SHARE`, no less than the watcher's poll interval and no more than `LONGEST_S`.
The watcher stores the overview it reads each poll, so the page's default overview is
never asked of the broker twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

# An answer about a period of P is kept at most P / PERIOD_SHARE (1 h: 5 s; 24 h: 60 s).
PERIOD_SHARE = 720
LONGEST_S = 60.0
# Smaller answers are sent as they are: compressing them saves nothing worth the time.
GZIP_FROM_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Answer:
    """One serialized answer, with its compressed form when it is large."""

    value: Any
    body: bytes
    zipped: bytes | None
    at: float

    @classmethod
    def of(cls, value: Any) -> Answer:
        body = json.dumps(value, separators=(",", ":")).encode()
        zipped = gzip.compress(body, compresslevel=5) if len(body) >= GZIP_FROM_BYTES else None
        return cls(value, body, zipped, time.monotonic())

    def response(self, request: Request) -> Response:
        headers = {"Cache-Control": "no-store", "Vary": "Accept-Encoding"}
        accepts = request.headers.get("accept-encoding", "")
        if self.zipped is not None and "gzip" in accepts.lower():
            headers["Content-Encoding"] = "gzip"
            return Response(self.zipped, media_type="application/json", headers=headers)
        return Response(self.body, media_type="application/json", headers=headers)


@dataclass(slots=True)
class Answers:
    """Answers by key, each with how long it may be kept."""

    poll_s: float
    _held: dict[Hashable, tuple[Answer, float]] = field(default_factory=dict)
    _pending: dict[Hashable, asyncio.Future[Answer]] = field(default_factory=dict)

    def max_age_s(self, period_ms: int) -> float:
        return min(LONGEST_S, max(self.poll_s, period_ms / 1000 / PERIOD_SHARE))

    def store(self, key: Hashable, value: Any, max_age_s: float) -> Answer:
        """Hold `value` as `key`'s answer from now; serialized again only if it changed."""
        held = self._held.get(key)
        if held is not None and held[0].value == value:
            answer = dataclasses.replace(held[0], at=time.monotonic())
        else:
            answer = Answer.of(value)
        now = answer.at
        self._held = {k: v for k, v in self._held.items() if now - v[0].at < v[1]}  # expired
        self._held[key] = (answer, max_age_s)
        return answer

    def clear(self, keep: Hashable | None = None) -> None:
        """Forget every answer (the figures changed) but `keep`'s, just read."""
        self._held = {k: v for k, v in self._held.items() if k == keep}

    async def get(
        self, key: Hashable, max_age_s: float, compute: Callable[[], Awaitable[Any]]
    ) -> Answer:
        """The answer held for `key` if it is young enough; else `compute()`'s, computed
        once for every request that asks meanwhile (an error reaches each of them)."""
        held = self._held.get(key)
        if held is not None and time.monotonic() - held[0].at < held[1]:
            return held[0]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            answer = self.store(key, await compute(), max_age_s)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._pending.pop(key, None)
        future.set_result(answer)
        return answer
