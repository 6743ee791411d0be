"""The agent's parts on their own: the backends (real processes), the run table on
disk, metering, and the claim refusal in the error tree."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import FailedPrecondition, IcxError, InvalidConfig
from core.money import charge_minor
from core.states import JobState
from ledger import SignerKey, sign_records
from ledger.records import carbon_g, energy_wh
from node_agent import (
    AgentError,
    CannotReattach,
    DeviceBook,
    Refused,
    RunFacts,
    RunRow,
    RunTable,
    usage_record,
)
from node_agent._output import CHUNK_BYTES, JobOutput, Pace
from node_agent.backends import Backend, LaunchRequest, ProcessBackend
from tests.agents.detached import DetachedTestBackend
from tests.conftest import make_center, wait_for_async

# ------------------------------------------------------------------------ backends

BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "process": lambda root: ProcessBackend(),
    "detached-test": lambda root: DetachedTestBackend(root / "runs"),
}


class Output:
    def __init__(self) -> None:
        self.chunks: list[tuple[str, bytes]] = []

    async def __call__(self, stream: str, data: bytes) -> None:
        self.chunks.append((stream, data))

    def text(self, stream: str) -> str:
        return b"".join(d for s, d in self.chunks if s == stream).decode()


def request(tmp_path: Path, script: str, job_id: str = "j-1") -> LaunchRequest:
    return LaunchRequest(
        claim_id=f"c-{job_id}",
        job_id=job_id,
        command=(sys.executable, "-c", script),
        env={"GREETING": "hello"},
        device_indices=(2, 3),
        workdir=tmp_path / job_id,
    )


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_a_backend_runs_a_job_with_its_devices_and_reports_its_end(
    name: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        backend = BACKENDS[name](tmp_path)
        out = Output()
        script = (
            "import os, sys; print(os.environ['GREETING'], os.environ['ICX_DEVICES'], "
            "os.environ['CUDA_VISIBLE_DEVICES']); print('oops', file=sys.stderr); sys.exit(3)"
        )
        run = await backend.launch(request(tmp_path, script), out)
        assert await run.wait() == 3
        assert (out.text("stdout"), out.text("stderr")) == ("hello 2,3 2,3\n", "oops\n")
        assert run.run_id not in await backend.list_runs()

    asyncio.run(scenario())


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_a_backend_lists_a_live_run_and_kills_it(name: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = BACKENDS[name](tmp_path)
        run = await backend.launch(request(tmp_path, "import time; time.sleep(60)"), Output())
        assert await backend.list_runs() == [run.run_id]
        await run.kill()
        assert await run.wait() < 0  # ended by a signal
        assert await backend.list_runs() == []

    asyncio.run(scenario())


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_a_backend_refuses_a_program_it_cannot_start(name: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = BACKENDS[name](tmp_path)
        bad = LaunchRequest(
            claim_id="c-1",
            job_id="j-1",
            command=("no-such-program-here",),
            env={},
            device_indices=(0,),
            workdir=tmp_path / "j-1",
        )
        with pytest.raises(FileNotFoundError, match="not found on PATH: 'no-such-program-here'"):
            await backend.launch(bad, Output())
        assert await backend.list_runs() == []

    asyncio.run(scenario())


def test_the_process_backend_cannot_reattach() -> None:
    async def scenario() -> None:
        with pytest.raises(
            CannotReattach,
            match=r"^run 4242: the process backend's runs die with the agent that started them$",
        ):
            await ProcessBackend().reattach("4242", Output())

    asyncio.run(scenario())


def test_a_new_detached_backend_reattaches_and_follows_on_from_what_was_delivered(
    tmp_path: Path,
) -> None:
    """What a restarted agent does: a fresh backend on the same folder finds the run,
    and its output continues where the first follower stopped."""
    gate = tmp_path / "go"
    script = (
        "import os, sys, time\n"
        "print('before', flush=True)\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
        "print('after', flush=True)\n"
        "sys.exit(7)\n"
    )

    async def scenario() -> None:
        first_out = Output()
        first = DetachedTestBackend(tmp_path / "runs")
        run = await first.launch(request(tmp_path, script), first_out)
        await wait_for_async(
            lambda: first_out.text("stdout") == "before\n", 10, "output from the run"
        )

        second = DetachedTestBackend(tmp_path / "runs")
        assert await second.list_runs() == [run.run_id]
        second_out = Output()
        again = await second.reattach(run.run_id, second_out)
        gate.touch()
        assert await again.wait() == 7
        assert second_out.text("stdout") == "after\n"
        assert await second.list_runs() == []
        with pytest.raises(CannotReattach, match=f"^run {run.run_id}: no such run in "):
            await second.reattach(run.run_id, Output())
        await run.wait()  # the first follower ends too (its wrapper was reaped)

    asyncio.run(scenario())


# ----------------------------------------------------------------------- run table


def row(claim_id: str = "c-1", **changes: object) -> RunRow:
    fields: dict[str, object] = {
        "claim_id": claim_id,
        "job_id": "j-1",
        "pool_id": "p",
        "device_indices": (0, 3),
        "backend": "process",
        "backend_run_id": "4242",
        "tenant": "lab-a",
        "started_at_ms": 1_000,
        "state": JobState.RUNNING,
        **changes,
    }
    return RunRow(**fields)  # type: ignore[arg-type]


def test_the_run_table_keeps_what_a_restart_needs(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    table = RunTable(path)
    assert table.rows == {}
    live, ended = row("c-1"), row("c-2", state=JobState.FAILED, exit_code=2, ended_at_ms=9_000)
    table.put(live)
    table.put(ended)
    assert RunTable(path).rows == {"c-1": live, "c-2": ended}
    table.drop("c-1")
    assert RunTable(path).rows == {"c-2": ended}
    on_disk = json.loads(path.read_text())
    assert on_disk["version"] == 1
    assert on_disk["runs"][0]["device_indices"] == [0, 3]
    assert on_disk["runs"][0]["state"] == "failed"


def test_a_damaged_run_table_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    path.write_text('{"version": 1, "runs": [{"claim_id": "c-1"}]}')
    with pytest.raises(
        InvalidConfig, match=re.escape(f"run table {path}: row 0 has no 'device_indices'")
    ):
        RunTable(path)
    path.write_text('{"version": 9, "runs": []}')
    with pytest.raises(InvalidConfig, match=re.escape(f"run table {path}: expected version 1")):
        RunTable(path)


def test_a_run_row_checks_itself() -> None:
    with pytest.raises(InvalidConfig, match=r"^run c-1: state must be running or final$"):
        row(state=JobState.QUEUED)
    with pytest.raises(InvalidConfig, match="ended_at_ms 10 before started_at_ms 1000"):
        row(state=JobState.SUCCEEDED, ended_at_ms=10)


# ------------------------------------------------------------------------- metering

CENTER = make_center("CM", pools={"p": ("ascend-910", 8, 3_600)}, pue_milli=1_300, grid=560)
KEY = SignerKey.generate("CM")


@given(
    devices=st.integers(1, 8),
    started_at_ms=st.integers(1_600_000_000_000, 1_900_000_000_000),
    run_ms=st.integers(0, 30 * 86_400_000),
)
def test_metering_charges_whole_seconds_by_the_one_rule(
    devices: int, started_at_ms: int, run_ms: int
) -> None:
    facts = RunFacts(
        claim_id="c-9",
        job_id="j-9",
        tenant="lab-a",
        pool_id="p",
        devices=devices,
        started_at_ms=started_at_ms,
        ended_at_ms=started_at_ms + run_ms,
    )
    r = usage_record(CENTER, facts)
    wall_s = run_ms // 1000
    assert (r.record_id, r.producer, r.consumer, r.job_id) == ("CM/c-9", "CM", "lab-a", "j-9")
    assert (r.start_ms, r.end_ms, r.wall_s, r.device_s) == (
        started_at_ms,
        started_at_ms + run_ms,
        wall_s,
        devices * wall_s,
    )
    assert r.energy_wh == energy_wh(devices, 300, wall_s, 1_300)
    assert r.carbon_g == carbon_g(r.energy_wh, 560)
    assert r.charge_minor == charge_minor(devices * wall_s, 3_600) == devices * wall_s
    # Metered again after a restart, the same facts sign to the same bytes.
    again = usage_record(CENTER, facts)
    assert sign_records([again], KEY)[0].entry() == sign_records([r], KEY)[0].entry()


# --------------------------------------------------------------------------- errors


def test_a_refused_claim_is_in_the_error_tree() -> None:
    book = DeviceBook(make_center("CR", pools={"p": ("ascend-910", 2, 500)}))
    with pytest.raises(Refused, match=r"^only 2 of 3 devices free in pool p$") as caught:
        book.reserve(claim_id="c-1", job_id="j-1", pool_id="p", devices=3, lease_expires_at_ms=0)
    assert isinstance(caught.value, AgentError)
    assert isinstance(caught.value, FailedPrecondition)
    assert isinstance(caught.value, IcxError)


def test_the_process_backend_ends_a_run_with_its_process(tmp_path: Path) -> None:
    """What the job left running in its group is stopped at its end; a process that
    left the group and holds the output open delays the end only by a bounded drain."""
    script = (
        "import subprocess\n"
        "left = subprocess.Popen(['sleep', '60'])\n"
        "escaped = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "print(left.pid, escaped.pid, flush=True)\n"
    )

    async def scenario() -> None:
        out = Output()
        run = await ProcessBackend().launch(request(tmp_path, script), out)
        assert await run.wait() == 0
        left, escaped = map(int, out.text("stdout").split())
        try:
            assert not alive(left)
            assert alive(escaped)  # out of reach of the job's group, as documented
        finally:
            os.kill(escaped, signal.SIGKILL)

    asyncio.run(scenario())


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_jobs_output_is_all_on_disk_and_a_bounded_part_forwarded(tmp_path: Path) -> None:
    sent: list[tuple[str, bytes]] = []
    data = bytes(range(256)) * 1000

    async def scenario() -> None:
        output = JobOutput(
            tmp_path / "j-1",
            job_id="j-1",
            send=lambda stream, piece: sent.append((stream, piece)),
            pace=Pace(),
            stream_max_bytes=100_000,
        )
        await output.write("stdout", data)
        await output.write("stderr", b"err\n")
        output.close()

    asyncio.run(scenario())
    assert (tmp_path / "j-1" / "icx-stdout.log").read_bytes() == data
    assert (tmp_path / "j-1" / "icx-stderr.log").read_bytes() == b"err\n"
    assert all(len(piece) <= CHUNK_BYTES for _, piece in sent)
    assert {stream for stream, _ in sent} == {"stdout"}
    note = (
        b"\n[icx agent: output past 100000 bytes is not forwarded; the center keeps all of "
        b"it in the job's folder, icx-stdout.log and icx-stderr.log]\n"
    )
    assert b"".join(piece for _, piece in sent) == data[:100_000] + note


def test_the_run_table_journals_each_change_and_folds_it_in(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    table = RunTable(path)
    rows = [row(f"c-{i}") for i in range(100)]
    for r in rows:
        table.put(r)
    for r in rows[:95]:
        table.drop(r.claim_id)
    # Each change was appended, not a rewrite of the table; the journal was folded in
    # whenever it outgrew the table, so it stays short.
    journal = path.with_name("runs.json.journal")
    assert len(journal.read_text().splitlines()) <= 64
    assert RunTable(path).rows == {r.claim_id: r for r in rows[95:]}
    assert not journal.exists()  # opening folds it into the snapshot
    assert [r["claim_id"] for r in json.loads(path.read_text())["runs"]] == [
        r.claim_id for r in rows[95:]
    ]


def test_a_torn_journal_line_is_ignored_and_a_bad_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    table = RunTable(path)
    table.put(row("c-1"))
    table.put(row("c-2"))
    journal = path.with_name("runs.json.journal")
    whole = journal.read_text()
    journal.write_text(whole + '{"put": {"claim_id": "c-3", "jo')  # a crash mid-append
    assert sorted(RunTable(path).rows) == ["c-1", "c-2"]
    journal.write_text('{"drop": "c-1"}\nnot json\n')
    with pytest.raises(InvalidConfig, match=re.escape(f"run table journal {journal}: line 2:")):
        RunTable(path)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "kubernetes"}, "backend.kind must be one of process, slurm, docker, got 'ku"),
        (
            {"kind": "process", "partition": "gpu"},
            "kind = 'process' takes no options, got partition",
        ),
    ],
)
def test_a_backend_the_config_cannot_have_is_refused_naming_it(
    table: dict[str, object], message: str, tmp_path: Path
) -> None:
    from node_agent.backends import make_backend
    from node_agent.config import parse_backend

    with pytest.raises(InvalidConfig, match=re.escape(message)):
        make_backend(parse_backend({"backend": table}), tmp_path)
    assert make_backend(parse_backend({}), tmp_path).name == "process"
