"""The dashboard's shared answers: one broker call for many requests, compressed for a
browser, and fresh again after the figures change."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from core.errors import Unavailable
from dashboard.answers import LONGEST_S, Answers
from tests.conftest import wait_for
from tests.dashboard.conftest import Dashboard


def _get(dash: Dashboard, path: str, encoding: str) -> tuple[int, str | None, bytes]:
    connection = http.client.HTTPConnection(urlsplit(dash.url).netloc, timeout=10)
    try:
        connection.request(
            "GET",
            path,
            headers={"Authorization": f"token {dash.token}", "Accept-Encoding": encoding},
        )
        reply = connection.getresponse()
        return reply.status, reply.headers.get("Content-Encoding"), reply.read()
    finally:
        connection.close()


def test_the_overview_is_gzipped_for_a_client_that_takes_it_and_equal_to_the_plain_one(
    dash: Dashboard,
) -> None:
    def same_moment() -> bool:
        plain = _get(dash, "/api/overview?period=1h", "identity")
        zipped = _get(dash, "/api/overview?period=1h", "gzip, deflate")
        assert plain[:2] == (200, None) and zipped[:2] == (200, "gzip")
        assert len(zipped[2]) < len(plain[2])
        return bool(json.loads(gzip.decompress(zipped[2])) == json.loads(plain[2]))

    wait_for(same_moment, 10, "the same overview plain and gzipped")


def test_a_failed_answer_reaches_its_caller_and_is_not_held() -> None:
    answers = Answers(poll_s=1.0)

    async def main() -> None:
        with pytest.raises(Unavailable):
            await answers.get("k", 5.0, _fails)
        # Not held: the next request asks again (and gets the answer).
        assert (await answers.get("k", 5.0, _value(7))).value == 7

    asyncio.run(main())


def test_requests_at_the_same_moment_share_one_computation_until_it_is_cleared() -> None:
    answers = Answers(poll_s=1.0)
    calls: list[int] = []
    in_flight = asyncio.Event()
    answered = asyncio.Event()

    async def compute() -> dict[str, int]:
        calls.append(1)
        in_flight.set()
        await answered.wait()  # a broker call in flight while others ask
        return {"n": len(calls)}

    asked: list[int] = []
    all_asked = asyncio.Event()

    async def ask() -> Any:
        # `get` reaches the shared computation without yielding: once every request has
        # asked, each one is waiting on it (or is computing it).
        asked.append(1)
        if len(asked) == 5:
            all_asked.set()
        return await answers.get("k", 60.0, compute)

    async def main() -> None:
        asking = [asyncio.create_task(ask()) for _ in range(5)]
        await in_flight.wait()
        await all_asked.wait()
        answered.set()
        got = await asyncio.gather(*asking)
        assert [a.value for a in got] == [{"n": 1}] * 5 and len(calls) == 1
        assert (await answers.get("k", 60.0, compute)).value == {"n": 1}
        answers.clear(keep="other")  # the recomputation below is answered at once (set)
        assert (await answers.get("k", 60.0, compute)).value == {"n": 2}

    asyncio.run(main())


def test_an_answer_is_kept_for_a_share_of_its_period_within_bounds() -> None:
    answers = Answers(poll_s=1.0)
    assert answers.max_age_s(3_600_000) == 5.0
    assert answers.max_age_s(60_000) == 1.0  # never less than the watcher's poll
    assert answers.max_age_s(7 * 86_400_000) == LONGEST_S


async def _fails() -> int:
    raise Unavailable("the broker is down")


def _value(v: int) -> Callable[[], Awaitable[int]]:
    async def compute() -> int:
        return v

    return compute


def test_the_watcher_logs_a_changed_figure_once_and_a_round_that_moved_nothing_not_at_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dashboard.live import Pulse, Watcher

    totals = {"jobs_running": 1, "jobs_done": 0, "queue_length": 4}
    pulses = [
        Pulse(dict(totals), 1, 0),
        Pulse(dict(totals), 2, 0),  # unplaceable jobs: a new round, nothing else
        Pulse(dict(totals), 3, 0),
        Pulse({**totals, "jobs_done": 1}, 4, 0),
    ]

    async def read() -> Pulse:
        return pulses.pop(0)

    async def scenario() -> int:
        watcher = Watcher(read_pulse=read)
        for _ in range(4):
            await watcher.poll_once()
        return watcher.version

    with caplog.at_level(logging.INFO, logger="icx.dashboard"):
        versions = asyncio.run(scenario())
    assert versions == 4  # every round still reaches the page (its rounds panel)
    assert [r.getMessage() for r in caplog.records] == ["figures changed: jobs_done 0 -> 1"]
