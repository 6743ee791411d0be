"""The contract every backend keeps, run on each entry of `ENTRIES` (conftest.py): the
process backend, the detached test backend, Slurm (a real cluster, tests/slurm_cluster.py)
and any backend added there. The jobs are POSIX `sh -c` scripts using only what a busybox
image has, so that a container backend runs the very same cases.

Each case runs its own event loop (`asyncio.run`); "an agent restart" is a second loop
with a new backend object on the same state after the first loop ended, which cancels
whatever the first backend was still doing, as the agent's death would."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from node_agent.errors import CannotReattach
from tests.backends.conftest import BackendEntry, Output, sh
from tests.conftest import wait_for_async

RUN_S = 30.0  # the most any case's job may take here


def test_a_job_runs_and_its_end_is_reported(entry: BackendEntry, tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = entry.make()
        out = Output()
        run = await backend.launch(sh(entry, tmp_path, "echo hello from $ICX_JOB_ID"), out)
        assert await asyncio.wait_for(run.wait(), RUN_S) == 0
        assert out.text("stdout") == "hello from j-1\n"
        assert out.text("stderr") == ""
        assert run.run_id not in await backend.list_runs()
        assert await entry.gone(run.run_id)

    asyncio.run(scenario())


def test_the_job_sees_its_devices_and_its_env(entry: BackendEntry, tmp_path: Path) -> None:
    async def scenario() -> None:
        out = Output()
        script = 'echo "$GREETING devices=$ICX_DEVICES job=$ICX_JOB_ID"'
        run = await entry.make().launch(sh(entry, tmp_path, script, device_indices=(1, 3)), out)
        assert await asyncio.wait_for(run.wait(), RUN_S) == 0
        assert out.text("stdout") == "hello devices=1,3 job=j-1\n"

    asyncio.run(scenario())


def test_stdout_and_stderr_arrive_whole_and_in_order(entry: BackendEntry, tmp_path: Path) -> None:
    # Some 200 kB on each stream, written line by line in turns: each stream's bytes
    # arrive complete and in order, whatever the backend's chunks.
    script = (
        "i=0; while [ $i -lt 20000 ]; do "
        'printf "out %05d\\n" $i; printf "err %05d\\n" $i >&2; i=$((i+1)); done'
    )

    async def scenario() -> None:
        out = Output()
        run = await entry.make().launch(sh(entry, tmp_path, script), out)
        assert await asyncio.wait_for(run.wait(), RUN_S) == 0
        assert out.text("stdout") == "".join(f"out {i:05d}\n" for i in range(20000))
        assert out.text("stderr") == "".join(f"err {i:05d}\n" for i in range(20000))

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ("exit 0", 0),
        ("echo failing >&2; exit 3", 3),
        ("kill -KILL $$", -signal.SIGKILL),
        ("kill -TERM $$", -signal.SIGTERM),
    ],
    ids=["zero", "non-zero", "sigkill", "sigterm"],
)
def test_the_exit_code_is_the_jobs(
    entry: BackendEntry, tmp_path: Path, script: str, code: int
) -> None:
    async def scenario() -> None:
        run = await entry.make().launch(sh(entry, tmp_path, script), Output())
        assert await asyncio.wait_for(run.wait(), RUN_S) == code

    asyncio.run(scenario())


def test_a_cancelled_run_is_gone(entry: BackendEntry, tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = entry.make()
        out = Output()
        run = await backend.launch(sh(entry, tmp_path, "echo started; sleep 60"), out)
        await wait_for_async(lambda: out.text("stdout") == "started\n", RUN_S, "the job running")
        assert await backend.list_runs() == [run.run_id]
        assert not await entry.gone(run.run_id)
        await asyncio.wait_for(run.kill(), RUN_S)
        # kill returns once the engine says the job ended: nothing of it is left.
        assert await entry.gone(run.run_id)
        assert await asyncio.wait_for(run.wait(), RUN_S) < 0
        assert await backend.list_runs() == []
        await run.kill()  # a second kill of an ended run is harmless

    asyncio.run(scenario())


def test_a_job_that_outlives_its_estimate_is_not_cut_off(
    entry: BackendEntry, tmp_path: Path
) -> None:
    """The estimate is the user's guess, not a limit: the backend puts no time limit of
    its own on the run (Slurm's partition here would cut a job without --time off after
    a minute)."""

    async def scenario() -> None:
        out = Output()
        run = await entry.make().launch(
            sh(entry, tmp_path, "echo start; sleep 2; echo still here"), out
        )
        await wait_for_async(lambda: out.text("stdout") == "start\n", RUN_S, "the job running")
        assert await entry.time_limit_s(run.run_id) is None
        assert await asyncio.wait_for(run.wait(), RUN_S) == 0
        assert out.text("stdout") == "start\nstill here\n"

    asyncio.run(scenario())


def test_a_job_that_cannot_start_is_refused_before_anything_runs(
    entry: BackendEntry, tmp_path: Path
) -> None:
    async def scenario() -> None:
        backend = entry.make()
        bad = sh(entry, tmp_path, "", command=("no-such-program-here",))
        with pytest.raises(FileNotFoundError, match="not found on PATH: 'no-such-program-here'"):
            await backend.launch(bad, Output())
        for case in entry.bad_starts:
            request = sh(entry, tmp_path, "echo never", **case.changes)
            with pytest.raises(case.error, match=case.match):
                await backend.launch(request, Output())
        assert await backend.list_runs() == []

    asyncio.run(scenario())


def test_a_restarted_agent_follows_the_run_on_or_says_it_cannot(
    entry: BackendEntry, tmp_path: Path
) -> None:
    """A new backend object on the same state: a backend whose runs outlive the agent
    finds the run, and its output goes on from where it was delivered, nothing twice; the
    process backend's runs die with the agent, and it says so."""
    request = sh(
        entry,
        tmp_path,
        "echo before; echo early >&2; while [ ! -e go ]; do sleep 0.05; done; "
        "echo after; echo late >&2; exit 7",
    )

    async def scenario() -> None:
        before = children()
        first_out = Output()
        first = await entry.make().launch(request, first_out)
        await wait_for_async(
            lambda: (first_out.text("stdout"), first_out.text("stderr")) == ("before\n", "early\n"),
            RUN_S,
            "the first output",
        )
        await agent_dies()
        backend = entry.make()
        if not entry.reattaches:
            with pytest.raises(CannotReattach, match=f"^run {first.run_id}: "):
                await backend.reattach(first.run_id, Output())
            (request.workdir / "go").touch()  # let the orphan end
            await wait_for_async(lambda: children() <= before, RUN_S, "the orphan reaped")
            return
        assert await backend.list_runs() == [first.run_id]
        out = Output()
        run = await backend.reattach(first.run_id, out)
        (request.workdir / "go").touch()
        assert await asyncio.wait_for(run.wait(), RUN_S) == 7
        assert (out.text("stdout"), out.text("stderr")) == ("after\n", "late\n")
        assert first_out.text("stdout") == "before\n"  # the first follower died with its agent
        assert await backend.list_runs() == []
        # Followed to its end: asked again (an agent that died before noting the end),
        # the backend says it cannot, or (its engine still knows the run) reports the
        # same end and delivers nothing twice.
        again = Output()
        try:
            late = await backend.reattach(first.run_id, again)
        except CannotReattach as exc:
            assert str(exc).startswith(f"run {first.run_id}: ")
        else:
            assert await asyncio.wait_for(late.wait(), RUN_S) == 7
            assert again.chunks == []
        # What the first life started here (a wrapper process) is reaped by this loop.
        await wait_for_async(lambda: children() <= before, RUN_S, "the first life's children")

    asyncio.run(scenario())


def children() -> set[int]:
    """This process's child processes (the test's daemons among them)."""
    found: set[int] = set()
    for listing in Path("/proc/self/task").glob("*/children"):
        found.update(int(pid) for pid in listing.read_text().split())
    return found


async def agent_dies() -> None:
    """What the agent's death does to a backend: every task it runs stops (the runs
    themselves are the backend's business)."""
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
