"""The agent's parts on their own: the run table on disk, metering, the device book
and the claim refusal in the error tree. The backends have their own contract suite
(tests/backends)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import FailedPrecondition, IcxError, InvalidArgument, InvalidConfig
from core.money import charge_minor
from core.states import JobState
from ledger import SignerKey, sign_records
from ledger.records import carbon_g, energy_wh
from node_agent import (
    AgentError,
    DeviceBook,
    Refused,
    RunFacts,
    RunRow,
    RunTable,
    usage_record,
)
from node_agent._output import CHUNK_BYTES, JobOutput, Pace
from tests.conftest import make_center

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


def reserve(book: DeviceBook, claim_id: str, devices: int) -> tuple[int, ...]:
    return book.reserve(
        claim_id=claim_id, job_id=f"j-{claim_id}", pool_id="p", devices=devices,
        lease_expires_at_ms=0,
    ).indices  # fmt: skip


def test_devices_in_use_outside_icx_are_never_reserved_or_offered() -> None:
    book = DeviceBook(make_center("CO", pools={"p": ("ascend-910", 4, 500)}))
    assert reserve(book, "c-1", 1) == (0,)
    assert book.set_outside("p", {1, 2}, source="slurm")
    assert not book.set_outside("p", {2, 1}, source="slurm")  # no change
    assert book.free("p") == 1
    with pytest.raises(Refused, match=r"^only 1 of 2 devices free in pool p$"):
        reserve(book, "c-2", 2)
    assert reserve(book, "c-3", 1) == (3,)
    assert book.free("p") == 0
    # Another source's word adds to it; a device both held and named outside (a source
    # that cannot tell icx's own use) counts once.
    assert book.set_outside("p", {0, 3}, source="nvml")
    book.release("c-1")
    book.release("c-3")
    assert book.free("p") == 0
    assert book.set_outside("p", (), source="nvml")
    assert book.free("p") == 2
    assert book.set_outside("p", (), source="slurm")
    assert (book.free("p"), book.outside("p")) == (4, frozenset())


def test_a_counted_outside_use_is_placed_away_from_the_claims() -> None:
    """Slurm's numbering is not the book's: its figure counts, on devices no claim holds
    (those it names that are free stay where they are)."""
    book = DeviceBook(make_center("CO", pools={"p": ("ascend-910", 4, 500)}))
    assert reserve(book, "c-1", 2) == (0, 1)
    assert book.set_outside("p", {0, 1}, source="slurm", counted=True)
    assert (book.outside("p"), book.free("p")) == (frozenset({2, 3}), 0)
    assert not book.set_outside("p", {1, 3}, source="slurm", counted=True)  # the same 2
    assert (book.outside("p"), book.free("p")) == (frozenset({2, 3}), 0)
    assert book.set_outside("p", {0}, source="slurm", counted=True)
    assert (book.outside("p"), book.free("p")) == (frozenset({2}), 1)
    # More named than there is room for beside the claims: every other device is out.
    assert book.set_outside("p", {0, 1, 2, 3}, source="slurm", counted=True)
    assert (book.outside("p"), book.free("p")) == (frozenset({2, 3}), 0)


def test_a_bad_outside_use_is_refused_and_changes_nothing() -> None:
    book = DeviceBook(make_center("CO", pools={"p": ("ascend-910", 4, 500)}))
    book.set_outside("p", {1})
    with pytest.raises(InvalidArgument, match=r"^pool p has devices 0\.\.3, got index 4$"):
        book.set_outside("p", {0, 4})
    with pytest.raises(InvalidArgument, match=r"^no pool 'q' at this center$"):
        book.set_outside("q", {0})
    assert (book.outside("p"), book.free("p")) == (frozenset({1}), 3)


def test_a_restored_run_may_hold_devices_a_source_sees_in_use() -> None:
    """After a restart the run's own devices may already be named outside (NVML sees
    its processes): the run gets them back; a device a claim holds does not."""
    book = DeviceBook(make_center("CO", pools={"p": ("ascend-910", 4, 500)}))
    book.set_outside("p", {2, 3}, source="nvml")
    book.restore(claim_id="c-1", job_id="j-1", pool_id="p", indices=(2, 3))
    with pytest.raises(Refused, match=r"^devices \[3\] of pool p are not all free$"):
        book.restore(claim_id="c-2", job_id="j-2", pool_id="p", indices=(3,))
    assert book.free("p") == 2


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
    ("images", "image", "reason"),
    [
        (("icx/busybox:1",), "icx/other:1",
         "this center does not accept the image 'icx/other:1' (it accepts icx/busybox:1)"),
        ((), "icx/busybox:1",
         "this center does not accept the image 'icx/busybox:1' (it accepts none: it runs "
         "no containers)"),
        (("icx/busybox:1",), "", "this center runs only container images; the job names none"),
    ],
    ids=["not-accepted", "no-containers", "no-image"],
)  # fmt: skip
def test_a_claim_for_a_job_the_center_cannot_run_is_refused_at_claim(
    images: tuple[str, ...], image: str, reason: str, tmp_path: Path
) -> None:
    """The claim carries the job's image: the center refuses it at once, saying why, and
    holds nothing (the broker requeues the job; it does not fail at launch)."""
    import dataclasses

    from node_agent import Agent
    from node_agent._messages import ReserveOrder

    center = dataclasses.replace(make_center("CI"), images=images)
    agent = Agent(center, "127.0.0.1:1", workdir=tmp_path / "work")
    order = ReserveOrder(
        claim_id="c-1", job_id="j-1", pool_id="main", devices=2,
        lease_expires_at_ms=10**13, image=image,
    )  # fmt: skip
    answer = agent.runs.reserve(order)
    assert (answer.accepted, answer.reason) == (False, reason)
    assert agent.runs.book.free("main") == 8 and not agent.runs.tasks
    fits = dataclasses.replace(order, image=images[0] if images else "")
    assert agent.runs.reserve(fits).accepted


def test_output_made_while_the_stream_is_down_goes_once_the_broker_has_the_hello() -> None:
    """A run re-attached before the stream is up (or writing through a reconnect) does
    not lose its output: it is held, oldest dropped beyond the bound, and sent in order
    once the broker has welcomed the agent."""
    from core.clock import SYSTEM
    from core.types import JobId, LogChunk
    from icx.v1 import agent_pb2
    from node_agent._link import HELD_OUTPUT_BYTES, Link
    from node_agent.metrics import AgentMetrics

    async def scenario() -> list[int]:
        link = Link(
            make_center("CL"), "127.0.0.1:1", usage_key=None, clock=SYSTEM,
            metrics=AgentMetrics(),
        )  # fmt: skip
        big = HELD_OUTPUT_BYTES // 2
        for seq, size in ((1, big), (2, big), (3, 10), (4, 10)):  # 1 goes: over the bound
            link.send_output(
                LogChunk(job_id=JobId("j-1"), seq=seq, stream="stdout", data=b"x" * size)
            )
        out: asyncio.Queue[agent_pb2.ConnectRequest] = asyncio.Queue()
        link._welcome(agent_pb2.Welcome(heartbeat_interval_ms=1000, center_expiry_ms=10_000), out)
        link.send_output(LogChunk(job_id=JobId("j-1"), seq=5, stream="stdout", data=b"y"))
        sent = []
        while not out.empty():
            sent.append(out.get_nowait().log.seq)
        return sent

    assert asyncio.run(scenario()) == [2, 4, 5]  # 3 and 4 joined, under the later number


def _welcomed(link: object) -> list[object]:
    """What `link` sends once the broker welcomes it, in order."""
    from icx.v1 import agent_pb2

    out: asyncio.Queue[agent_pb2.ConnectRequest] = asyncio.Queue()
    welcome = agent_pb2.Welcome(heartbeat_interval_ms=1000, center_expiry_ms=10_000)
    link._welcome(welcome, out)  # type: ignore[attr-defined]
    return [out.get_nowait() for _ in range(out.qsize())]


def test_held_output_goes_in_few_pieces_each_jobs_messages_in_order() -> None:
    """What jobs wrote in small pieces through an outage is sent joined (a job's
    successive pieces of one stream, up to CHUNK_BYTES, under the last piece's number):
    the broker takes a center's chunks at a bounded rate. A job's other stream or its
    update ends a join; another job's pieces do not."""
    from core import wire
    from core.clock import SYSTEM
    from core.states import JobState
    from core.types import JobId, LogChunk
    from node_agent._link import Link
    from node_agent._messages import JobUpdate
    from node_agent._output import CHUNK_BYTES
    from node_agent.metrics import AgentMetrics

    async def scenario() -> list[tuple[str, int, str, int]]:
        link = Link(
            make_center("CL"), "127.0.0.1:1", usage_key=None, clock=SYSTEM,
            metrics=AgentMetrics(),
        )  # fmt: skip
        line = b"x" * 99 + b"\n"
        seq = {"j-1": 0, "j-2": 0}

        def write(job: str, stream: str, n: int, data: bytes = line) -> None:
            for _ in range(n):
                seq[job] += 1
                chunk = LogChunk(job_id=JobId(job), seq=seq[job], stream=stream, data=data)
                link.send_output(chunk)

        for _ in range(1000):  # two jobs writing lines at once: 1,000 pieces of 100 bytes each
            write("j-1", "stdout", 1)
            write("j-2", "stdout", 1)
        write("j-1", "stderr", 1)
        write("j-1", "stdout", 1)
        link.send_update(
            JobUpdate(claim_id="c-1", job_id="j-1", state=JobState.SUCCEEDED, at_ms=1, exit_code=0)
        )
        write("j-2", "stdout", 1, b"big" * CHUNK_BYTES)
        sent = []
        for m in _welcomed(link):
            if m.HasField("log"):
                stream = wire.log_stream_from_proto(m.log.stream)
                sent.append((m.log.job_id, m.log.seq, stream, len(m.log.data)))
            else:
                sent.append((m.job_update.job_id, 0, "end", 0))
        return sent

    sent = asyncio.run(scenario())
    per_chunk = CHUNK_BYTES // 100  # whole lines of 100 bytes in one piece
    j1 = [s for s in sent if s[0] == "j-1"]
    assert j1 == [
        ("j-1", per_chunk, "stdout", per_chunk * 100),
        ("j-1", 1000, "stdout", (1000 - per_chunk) * 100),
        ("j-1", 1001, "stderr", 100),
        ("j-1", 1002, "stdout", 100),
        ("j-1", 0, "end", 0),
    ]
    j2 = [s for s in sent if s[0] == "j-2"]
    assert j2 == [
        ("j-2", per_chunk, "stdout", per_chunk * 100),
        ("j-2", 1000, "stdout", (1000 - per_chunk) * 100),
        ("j-2", 1001, "stdout", 3 * CHUNK_BYTES),
    ]


def test_a_job_that_ended_while_the_stream_was_down_is_said_running_until_its_output_is_in() -> (
    None
):
    """The broker keeps a job's output only while the job is live and takes the Hello
    before what was held: a job that ended with output still held is said to be running in
    the Hello, and its held end follows its output. A job that ended with no output held,
    or was cancelled (it may never have run), is said to have ended in the Hello, and its
    held update is not sent again."""
    from core import wire
    from core.clock import SYSTEM
    from core.states import JobState
    from core.types import JobId, LogChunk
    from icx.v1 import agent_pb2
    from node_agent._link import Link
    from node_agent._messages import HeldClaim, JobUpdate
    from node_agent.metrics import AgentMetrics

    async def scenario() -> tuple[agent_pb2.Hello, list[str]]:
        link = Link(
            make_center("CL"), "127.0.0.1:1", usage_key=None, clock=SYSTEM,
            metrics=AgentMetrics(),
        )  # fmt: skip
        link.send_output(LogChunk(job_id=JobId("j-1"), seq=1, stream="stdout", data=b"end\n"))
        link.send_output(LogChunk(job_id=JobId("j-4"), seq=1, stream="stdout", data=b"x\n"))
        for claim, job, state, code in (
            ("c-1", "j-1", JobState.SUCCEEDED, 0),
            ("c-2", "j-2", JobState.FAILED, 3),
            ("c-4", "j-4", JobState.CANCELLED, 1),
        ):
            link.send_update(
                JobUpdate(claim_id=claim, job_id=job, state=state, at_ms=1, exit_code=code)
            )
        hello = link._hello([
            HeldClaim(claim_id="c-1", job_id="j-1", state=JobState.SUCCEEDED, exit_code=0),
            HeldClaim(claim_id="c-2", job_id="j-2", state=JobState.FAILED, exit_code=3),
            HeldClaim(claim_id="c-3", job_id="j-3", state=JobState.RUNNING),
            HeldClaim(claim_id="c-4", job_id="j-4", state=JobState.CANCELLED, exit_code=1),
        ])  # fmt: skip
        sent = []
        for m in _welcomed(link):
            if m.HasField("log"):
                sent.append(f"log {m.log.job_id} {m.log.data.decode().strip()}")
            else:
                u = m.job_update
                sent.append(f"{u.claim_id} {wire.state_from_proto(u.state).value} {u.exit_code}")
        return hello, sent

    hello, sent = asyncio.run(scenario())
    said = {
        c.claim_id: (
            wire.state_from_proto(c.state).value,
            c.exit_code if c.HasField("exit_code") else None,
        )
        for c in hello.held
    }
    assert said == {
        "c-1": ("running", None),
        "c-2": ("failed", 3),
        "c-3": ("running", None),
        "c-4": ("cancelled", 1),  # it may never have started: not said to run
    }
    assert sent == ["log j-1 end", "log j-4 x", "c-1 succeeded 0"]


def test_a_hung_broker_address_counts_as_silence_even_while_the_other_refuses(
    tmp_path: Path,
) -> None:
    """A region of two addresses: one hung (takes connections, never answers), one that
    refuses (a standby not listening). A refusal means no broker counts the center's
    silence only when every address refuses: here the hung one may be a live broker cut
    off from this center, so the silence grows and the agent will fence its jobs."""
    import socket

    import node_agent._link as link_module
    from node_agent import Agent
    from node_agent.agent import _Handler
    from tests.conftest import hung_host, wait_for_async

    refusing = socket.create_server(("127.0.0.1", 0))
    refused_at = f"127.0.0.1:{refusing.getsockname()[1]}"
    refusing.close()  # nothing listens there now

    async def scenario(brokers: str, taken: list[socket.socket]) -> None:
        agent = Agent(make_center("CH"), brokers, workdir=tmp_path / "work")
        task = asyncio.create_task(agent.link.run(_Handler(agent)))
        try:
            # Each address tried more than once, and the silence never reset meanwhile
            # (a refusal reset it each time: it stayed under a second).
            await wait_for_async(
                lambda: len(taken) >= 3 and agent.link.silent_ms() >= 2_900,
                10,
                "silence growing through three tries of the hung address",
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    answer_s = link_module._ANSWER_S
    link_module._ANSWER_S = 0.5  # the hung address tried several times a few seconds
    try:
        with hung_host() as (hung, taken):
            asyncio.run(scenario(f"{hung},{refused_at}", taken))
    finally:
        link_module._ANSWER_S = answer_s
