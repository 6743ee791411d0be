"""The Slurm backend's own cases beside the contract suite, against the real Slurm of
tests/slurm_cluster.py: whose jobs are icx's, what is counted as in use outside icx, a
cancel Slurm does not answer, a submission the agent cannot note, a run followed to its
end by an agent that died before noting that end."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.slurm_local import LocalSlurm
from node_agent.backends import LaunchRequest, make_backend
from node_agent.backends._slurm import JOB_PREFIX, SlurmBackend, SlurmError, job_ended
from node_agent.config import BackendConfig
from node_agent.devices import DeviceBook
from node_agent.errors import CannotReattach
from tests.backends.conftest import Output
from tests.conftest import make_center, wait_for, wait_for_async
from tests.slurm_cluster import GRES, settle, slurm_cluster  # noqa: F401 (a fixture)

NOBODY = 65534


@pytest.fixture
def cluster(slurm_cluster: LocalSlurm) -> Iterator[LocalSlurm]:  # noqa: F811
    settle(slurm_cluster)
    yield slurm_cluster
    settle(slurm_cluster)


def backend(cluster: LocalSlurm, root: Path, center_id: str, **options: object) -> SlurmBackend:
    config = BackendConfig(
        "slurm",
        {
            "partition": cluster.partition,
            "slurm_conf": str(cluster.conf),
            "poll_s": 0.1,
            "gres": {"p": GRES},
            **options,
        },
    )
    made = make_backend(config, root, make_center(center_id, pools={"p": ("ascend-910", 4, 500)}))
    assert isinstance(made, SlurmBackend)
    return made


def request(root: Path, job_id: str, script: str, devices: tuple[int, ...]) -> LaunchRequest:
    return LaunchRequest(
        claim_id=f"c-{job_id}",
        job_id=job_id,
        command=("sh", "-c", script),
        env={"ICX_POOL_ID": "p"},
        device_indices=devices,
        workdir=root / "jobs" / job_id,
    )


def sbatch(cluster: LocalSlurm, *argv: str, as_uid: int | None = None) -> int:
    """Submit a job of the center's own users (root submits for `as_uid`: the test
    cluster's files are root's alone); its Slurm id."""
    uid = [f"--uid={as_uid}", f"--gid={as_uid}"] if as_uid is not None else []
    done = cluster.run("sbatch", "--parsable", *uid, *argv)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().split(";")[0])


def running(cluster: LocalSlurm, slurm_id: int) -> bool:
    return any(j["job_id"] == slurm_id and "RUNNING" in str(j["job_state"]) for j in cluster.jobs())


def test_a_job_named_and_commented_like_icxs_by_another_user_is_not_icxs(
    cluster: LocalSlurm, tmp_path: Path
) -> None:
    """Anyone may call a job `icx-...` with an icx comment: a job of another user is
    never listed nor re-attached, so a restarted agent never cancels it. (It is held:
    another user's job cannot run in the test cluster, whose files are root's alone.)"""
    slurm = backend(cluster, tmp_path / "agent", "CF1")
    foreign = sbatch(
        cluster,
        "--hold",
        f"--job-name={JOB_PREFIX}j-9",
        "--comment=icx center=CF1 pool=p devices=0,1",
        f"--gres={GRES}:2",
        "--chdir=/tmp",
        "--output=/dev/null",
        "--wrap=sleep 60",
        as_uid=NOBODY,
    )
    [job] = [j for j in cluster.jobs() if j["job_id"] == foreign]
    assert (job["user_id"], job["job_state"]) == (NOBODY, "PENDING")

    async def scenario() -> None:
        assert await slurm.list_runs() == []
        with pytest.raises(
            CannotReattach, match=f"^run {foreign}: this Slurm job is not this agent's$"
        ):
            await slurm.reattach(str(foreign), Output())

    asyncio.run(scenario())
    [job] = [j for j in cluster.jobs() if j["job_id"] == foreign]
    assert job["job_state"] == "PENDING"


def test_what_slurm_counts_outside_icx_never_overlaps_what_the_book_holds(
    cluster: LocalSlurm, tmp_path: Path
) -> None:
    """Slurm numbers the center's own use physically, and the book's indices of icx's
    claims are its own: a reservation not yet submitted holds book indices 0,1 while
    the center's job takes Slurm's 0,1. Slurm's figure is a count, placed away from the
    book's claims: nothing is offered beyond what Slurm has free, before the launch and
    while icx's job runs (on whatever devices Slurm gave it)."""
    slurm = backend(cluster, tmp_path / "agent", "CF2")
    book = DeviceBook(make_center("CF2", pools={"p": ("ascend-910", 4, 500)}))
    held = book.reserve(
        claim_id="c-1", job_id="j-1", pool_id="p", devices=2, lease_expires_at_ms=0
    ).indices
    assert held == (0, 1)
    own = sbatch(cluster, f"--gres={GRES}:2", "--output=/dev/null", "--wrap=sleep 60")
    wait_for(lambda: running(cluster, own), 20, "the center's own job running")

    async def scenario() -> None:
        use = await slurm.outside_use()
        assert use["p"] == {0, 1}  # Slurm's numbering: the very indices the book holds
        book.set_outside("p", use["p"], source="slurm", counted=True)
        assert (book.free("p"), book.outside("p")) == (0, frozenset({2, 3}))
        run = await slurm.launch(request(tmp_path, "j-1", "sleep 60", held), Output())
        await wait_for_async(lambda: running(cluster, int(run.run_id)), 20, "icx's job running")
        use = await slurm.outside_use()
        assert len(use["p"]) == 2  # the center's own job; icx's is not outside
        book.set_outside("p", use["p"], source="slurm", counted=True)
        assert book.free("p") == 0
        await run.kill()
        use = await slurm.outside_use()
        book.release("c-1")
        book.set_outside("p", use["p"], source="slurm", counted=True)
        assert book.free("p") == 2
        await slurm.aclose()

    asyncio.run(scenario())


def test_a_cancel_slurm_does_not_answer_gives_up_with_a_clear_error(
    cluster: LocalSlurm, tmp_path: Path
) -> None:
    """kill is bounded: with slurmctld stopped, it raises naming the job after
    kill_timeout_s instead of waiting for ever; once Slurm answers, a kill ends it."""
    slurm = backend(cluster, tmp_path / "agent", "CF3")
    [ctld] = [pid for pid, name in zip(cluster.pids, ("munged", "slurmctld", "slurmd"), strict=True)
              if name == "slurmctld"]  # fmt: skip

    async def scenario() -> None:
        run = await slurm.launch(request(tmp_path, "j-1", "sleep 60", (0,)), Output())
        await wait_for_async(lambda: running(cluster, int(run.run_id)), 20, "the job running")
        slurm.kill_timeout_s = 1.0
        os.kill(ctld, signal.SIGSTOP)
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(SlurmError, match=rf"^.*Slurm job {run.run_id} has not ended 1 s"):
                await run.kill()
            assert asyncio.get_running_loop().time() - started < 5
        finally:
            os.kill(ctld, signal.SIGCONT)
        slurm.kill_timeout_s = 30.0
        await run.kill()
        assert job_ended(next(j for j in cluster.jobs() if str(j["job_id"]) == run.run_id))
        await slurm.aclose()

    asyncio.run(scenario())


def test_a_job_submitted_but_not_noted_is_cancelled(cluster: LocalSlurm, tmp_path: Path) -> None:
    """If the backend cannot note the job after sbatch (its state folder is gone), the
    launch fails and the job does not run on unseen in Slurm."""
    slurm = backend(cluster, tmp_path / "agent", "CF4")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    slurm.state_dir = blocker / "slurm"

    async def scenario() -> None:
        with pytest.raises(NotADirectoryError):
            await slurm.launch(request(tmp_path, "j-1", "sleep 60", (0,)), Output())

    asyncio.run(scenario())
    wait_for(
        lambda: all(job_ended(j) for j in cluster.jobs() if j["name"] == f"{JOB_PREFIX}j-1"),
        10,
        "the submitted job cancelled",
    )
    assert [j for j in cluster.jobs() if j["name"] == f"{JOB_PREFIX}j-1"]  # it was submitted


def test_a_job_followed_to_its_end_by_an_agent_that_died_then_is_followed_again(
    cluster: LocalSlurm, tmp_path: Path
) -> None:
    """The previous agent delivered the job's output and saw its end, then died before
    it noted the end in its run table: a new backend re-attaches (Slurm still knows the
    job) and reports the same end, delivering nothing twice."""
    first = backend(cluster, tmp_path / "agent", "CF5")

    async def scenario() -> None:
        out = Output()
        run = await first.launch(request(tmp_path, "j-1", "echo once; exit 3", (0,)), out)
        assert await run.wait() == 3
        assert out.text("stdout") == "once\n"
        again = Output()
        second = backend(cluster, tmp_path / "agent", "CF5")
        followed = await second.reattach(run.run_id, again)
        assert await followed.wait() == 3
        assert again.chunks == []

    asyncio.run(scenario())


def test_a_launch_returns_once_slurm_runs_the_job_and_gives_up_on_one_it_holds(
    cluster: LocalSlurm, tmp_path: Path
) -> None:
    """The launch returns a running job, so that the agent bills from the start Slurm
    gave it, not from the submission. A job Slurm keeps pending (a center user took the
    GPUs between the claim and the submission) is cancelled after `start_timeout_s`, and
    the launch fails saying why Slurm held it."""
    own = sbatch(cluster, f"--gres={GRES}:4", "--output=/dev/null", "--wrap=sleep 60")
    wait_for(lambda: running(cluster, own), 20, "the center's own job running")

    async def scenario() -> None:
        slurm = backend(cluster, tmp_path / "agent", "CS", start_timeout_s=1)
        held = request(tmp_path, "j-held", "echo never", (0,))
        with pytest.raises(SlurmError, match=r"within 1 s \(pending: Resources\); cancelled"):
            await slurm.launch(held, Output())
        assert await slurm.list_runs() == []
        cluster.run("scancel", str(own))
        run = await slurm.launch(request(tmp_path, "j-runs", "sleep 1; echo ran", (0,)), Output())
        job = await slurm.job(int(run.run_id), 0.0)
        assert job is not None and "PENDING" not in str(job["job_state"])
        assert await asyncio.wait_for(run.wait(), 30) == 0

    asyncio.run(scenario())
    names = [j["name"] for j in cluster.jobs() if not job_ended(j)]
    assert f"{JOB_PREFIX}j-held" not in names  # nothing of the held job left in Slurm


def test_a_command_given_up_with_its_output_unread_ends_at_once(
    cluster: LocalSlurm, tmp_path: Path
) -> None:
    """A Slurm command the caller gives up on (a bounded kill, a refresh, the agent
    stopping) is killed and ends at once, however much it had written that nobody read
    (squeue --json on a busy cluster writes megabytes). Waiting for its exit alone hung
    now and then: asyncio reports an exit only once the pipes close, and a pipe whose
    reader paused on a full buffer never does. Given up at many points of its output."""
    made = backend(cluster, tmp_path, "CW")

    async def give_up_after(turns: int) -> str:
        task = asyncio.create_task(made._command("head", "-c", "20000000", "/dev/zero"))
        for _ in range(turns):  # the point of giving up: after `turns` steps of the loop
            await asyncio.sleep(0)  # (no time waited: each turn lets the reading go on)
        task.cancel()
        try:
            await asyncio.wait_for(task, 10)
        except asyncio.CancelledError:
            return "ended"
        except TimeoutError:
            return "hung"
        return "finished before it was given up"

    async def main() -> list[str]:
        return [await give_up_after(turns) for turns in range(1, 241)]

    # On a thread of its own: a hang may be one no timeout of its event loop ends.
    outcomes: list[str] = []
    runner = threading.Thread(target=lambda: outcomes.extend(asyncio.run(main())), daemon=True)
    runner.start()
    runner.join(120)
    assert not runner.is_alive(), "giving up on a command hung"
    assert "hung" not in outcomes
    assert outcomes.count("ended") > 200


def test_an_agent_stopping_stops_following_and_leaves_the_job_to_slurm(
    cluster: LocalSlurm, tmp_path: Path
) -> None:
    """`aclose` (the agent stops) ends every run's following before it returns, so
    nothing of the backend is left for the event loop's final cancel; the Slurm job
    itself runs on, for the next agent to take up."""
    slurm = backend(cluster, tmp_path / "agent", "CS")

    async def scenario() -> int:
        run = await slurm.launch(request(tmp_path, "j-1", "sleep 60", (0,)), Output())
        await slurm.aclose()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert others == set(), others
        return int(run.run_id)

    slurm_id = asyncio.run(scenario())
    assert running(cluster, slurm_id)
    cluster.run("scancel", str(slurm_id))
