"""The coordinator's national view and policy on a real broker with two real agents
(mutual TLS): figures equal the jobs' and the ledger's own records, a coordinator's
policy moves the next round's allocation and survives a restart, nobody else can set
one, and a bad one changes nothing.

The tests share one federation and run in order: a workload under the default policy
(every job on the cheap coal grid), then a greener policy (the next job goes west)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.national_load import fill, usage_records
from broker.capacity import PoolCapacity
from broker.core import Broker
from broker.national import REUSE_MS, reason_kind
from broker.peers import Place, parse_summary, summary_payload
from broker.sqlite_store import SqliteStore
from cli.federation import LocalFederation
from client import BrokerClient
from core.accelerators import CATALOGUE
from core.clock import ManualClock
from core.errors import InvalidArgument, PermissionDenied
from core.national import Overview
from core.states import JobState
from core.types import CenterId, Job, JobSpec, PoolId, PoolRef
from identity import Role
from ledger.bill import LoggedRecord
from ledger.records import RecordKind
from tests.conftest import FAST_BROKER, make_center, run_icx, wait_centers, wait_for

COAL = make_center("NORTH", region="JJJ", grid=800, pools={"p": ("ascend-910", 8, 500)})
HYDRO = make_center("WEST", region="CY", grid=100, pools={"p": ("ascend-910", 8, 520)})
GREEN = {"weights": {"cost": 1, "carbon": 10}, "carbon_price_yuan_per_tonne": 200}
SHORT = JobSpec(
    accelerator="ascend-910",
    devices=2,
    estimated_s=3600,
    data_region="JJJ",
    command=("sleep", "0.3"),
)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(
        root=tmp_path_factory.mktemp("national") / "fed", broker_args=FAST_BROKER
    ) as f:
        for c in (COAL, HYDRO):
            f.start_agent(c)
        with f.client() as user:
            wait_centers(user, 2)
        yield f


def _run(user: BrokerClient, n: int) -> list[Job]:
    ids = [user.submit(SHORT).job_id for _ in range(n)]

    def ended() -> list[Job] | None:
        jobs = [user.get_job(i) for i in ids]
        return jobs if all(j.state == JobState.SUCCEEDED for j in jobs) else None

    return wait_for(ended, 30, "the jobs to succeed")


def _records(user: BrokerClient, jobs: list[Job]) -> list[LoggedRecord]:
    """The ledger's records of `jobs`, once every job has its own."""

    def all_in() -> list[LoggedRecord] | None:
        found = [r for j in jobs for r in user.job_records(j.job_id)]
        return (
            found if {r.signed.record.job_id for r in found} == {j.job_id for j in jobs} else None
        )

    return wait_for(all_in, 20, "the usage records")


def _overview_when_metered(coord: BrokerClient, energy_wh: int) -> Overview:
    def metered() -> Overview | None:
        o = coord.overview()
        return o if o.totals.energy_wh == energy_wh else None

    return wait_for(metered, 10, "the overview to count the ledger's energy")


def test_figures_equal_the_jobs_and_ledgers_records(fed: LocalFederation) -> None:
    with fed.client("lab-a") as user, fed.client(role=Role.COORDINATOR) as coord:
        jobs = _run(user, 3)
        assert {j.center_id for j in jobs} == {"NORTH"}  # cost alone: the cheap grid
        records = [r.signed.record for r in _records(user, jobs)]
        energy = sum(r.energy_wh for r in records)
        overview = _overview_when_metered(coord, energy)

        north = next(c for c in overview.centers if c.center_id == "NORTH")
        west = next(c for c in overview.centers if c.center_id == "WEST")
        assert (north.region, north.live, north.grid_g_co2_per_kwh) == ("JJJ", True, 800)
        assert north.figures.jobs_done == 3 and west.figures.jobs_done == 0
        assert north.figures.devices_total == 8 and north.figures.jobs_running == 0
        assert north.figures.energy_wh == energy
        assert north.figures.carbon_g == sum(r.carbon_g for r in records)
        assert north.figures.spend_minor == sum(r.charge_minor for r in records)
        # The broker's own view of each run is within a second of the center's meter.
        metered_s = sum(r.device_s for r in records)
        assert abs(north.figures.device_seconds - metered_s) <= 2 * len(jobs)
        hubs = {h.region: h.figures for h in overview.hubs}
        assert hubs["JJJ"].jobs_done == 3 and hubs["CY"].jobs_done == 0
        assert overview.totals.centers == 2 and overview.totals.devices_total == 16
        assert [(f.from_region, f.to_region, f.jobs) for f in overview.flows] == [("JJJ", "JJJ", 3)]

        series = coord.time_series(window_ms=3_600_000, step_ms=60_000)
        assert len(series.steps) == 60 and series.devices_total == 16
        assert sum(s.energy_wh for s in series.steps) == energy
        assert sum(s.carbon_g for s in series.steps) == sum(r.carbon_g for r in records)
        assert sum(s.spend_minor for s in series.steps) == sum(r.charge_minor for r in records)
        assert sum(s.jobs_started for s in series.steps) == 3
        assert sum(s.jobs_finished for s in series.steps) == 3
        assert any(s.queue_length is not None for s in series.steps)

        rounds = coord.rounds(limit=5)
        assert rounds and rounds[0].number >= rounds[-1].number
        assert sum(r.jobs_placed for r in coord.rounds(limit=500)) >= 3

        detail = coord.center_figures("NORTH")
        assert detail.center.figures.jobs_done == 3 and detail.running == ()


def test_bad_requests_are_refused_and_change_nothing(fed: LocalFederation) -> None:
    with fed.client(role=Role.COORDINATOR) as coord:
        before = coord.policy()
        with pytest.raises(InvalidArgument, match=r"weights\.carbon"):
            coord.set_policy(json.dumps({"weights": {"carbon": -1}}))
        with pytest.raises(InvalidArgument, match="policy_json is not JSON"):
            coord.set_policy("{")
        with pytest.raises(InvalidArgument, match="policy_json: nested too deeply"):
            coord.set_policy("[" * 100_000 + "]" * 100_000)
        with pytest.raises(InvalidArgument, match="policy_json: NaN is not a number"):
            coord.set_policy('{"carbon_price_yuan_per_tonne": NaN}')
        with pytest.raises(InvalidArgument, match="policy: a number out of range"):
            coord.set_policy('{"carbon_price_yuan_per_tonne": 1e308, "aging_hours": 1e308}')
        with pytest.raises(InvalidArgument, match="step_ms"):
            coord.time_series(window_ms=86_400_000, step_ms=1_000)
        assert coord.policy() == before and coord.policy_history() == []
    for role, name in ((Role.USER, ""), (Role.CENTER, "NORTH")):
        creds = fed.credentials(role, name)
        with (
            BrokerClient(fed.address, creds) as other,
            pytest.raises(PermissionDenied, match="may not call SetPolicy"),
        ):
            other.set_policy(json.dumps(GREEN))
    with fed.client(role=Role.COORDINATOR) as coord:
        assert coord.policy() == before and before.version == 0


def test_a_coordinators_policy_moves_the_next_round_and_survives_a_restart(
    fed: LocalFederation, tmp_path: Path
) -> None:
    with fed.client("lab-a") as user, fed.client(role=Role.COORDINATOR) as coord:
        west_before = _hub_device_seconds(coord.overview(), "CY")
        policy = coord.set_policy(json.dumps(GREEN), comment="greener")
        assert (policy.version, policy.comment) == (1, "greener")
        assert policy.set_by == "coordinator"
        assert json.loads(policy.policy_json) == GREEN
        [job] = _run(user, 1)
        assert job.center_id == "WEST"  # the carbon weight outweighs the price
        assert _hub_device_seconds(coord.overview(), "CY") >= west_before
        assert coord.center_figures("WEST").center.figures.jobs_done == 1

    fed.start_broker()  # a restart, on the same database
    with fed.client(role=Role.COORDINATOR) as coord:
        assert coord.policy() == policy
        assert coord.policy_history() == [policy]
        done = {c.center_id: c.figures.jobs_done for c in coord.overview().centers}
        assert done["NORTH"] == 3 and done["WEST"] == 1

    # The CLI: a coordinator reads and sets; a user is refused in one line.
    coordinator = fed.authority.folder / "coordinator"
    shown = run_icx("policy", "show", "--json", "--broker", fed.address, identity=coordinator)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["version"] == 1
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"weights": {"cost": 1}}))
    user_folder = fed.member("lab-a.user", Role.USER, tenant="lab-a")
    refused = run_icx("policy", "set", str(path), "--broker", fed.address, identity=user_folder)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == ["icx: error: a user may not call SetPolicy"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"quotas": {"JJJ": "many"}}))
    refused = run_icx("policy", "set", str(bad), "--broker", fed.address, identity=coordinator)
    assert refused.returncode == 2 and "quotas" in refused.stderr
    history = run_icx("policy", "history", "--json", "--broker", fed.address, identity=coordinator)
    assert [c["version"] for c in json.loads(history.stdout)] == [1]


def _hub_device_seconds(o: Overview, region: str) -> int:
    return next(h.figures.device_seconds for h in o.hubs if h.region == region)


def test_a_run_going_through_a_broker_killed_and_restarted_counts_whole(
    fed: LocalFederation,
) -> None:
    """A job running when the broker is SIGKILLed, reported by its agent to the restarted
    broker (on the same store, as a standby that takes over loads it) and ended there:
    its device-seconds are the whole run's, as the center metered it."""
    long = dataclasses.replace(SHORT, command=("sleep", "4"))
    with fed.client("lab-a") as user, fed.client(role=Role.COORDINATOR) as coord:
        earlier = _records(user, list(user.list_jobs([JobState.SUCCEEDED]).jobs))
        before = _overview_when_metered(coord, sum(r.signed.record.energy_wh for r in earlier))
        job = user.submit(long)
        wait_for(lambda: user.get_job(job.job_id).state == JobState.RUNNING, 15, "the job to run")
    assert fed.broker is not None
    fed.broker.kill()  # SIGKILL: the start it saw was not yet written
    fed.start_broker()
    with fed.client("lab-a") as user, fed.client(role=Role.COORDINATOR) as coord:
        wait_for(lambda: user.get_job(job.job_id).state == JobState.SUCCEEDED, 30, "the job to end")
        [record] = [r.signed.record for r in _records(user, [user.get_job(job.job_id)])]
        after = _overview_when_metered(coord, before.totals.energy_wh + record.energy_wh)
    ran = after.totals.device_seconds - before.totals.device_seconds
    assert record.device_s >= 2 * 3 and abs(ran - record.device_s) <= 2
    flows = {(f.from_region, f.to_region): f.device_seconds for f in after.flows}
    flows_before = {(f.from_region, f.to_region): f.device_seconds for f in before.flows}
    assert abs(sum(flows.values()) - sum(flows_before.values()) - ran) <= len(flows)
    assert after.totals.utilisation > before.totals.utilisation


# ---------------------------------------------------------------------------------------
# The indexes behind the figures, on a real store (no agents): a broker that loads the
# store and one that is told of the same runs one at a time, in another order, between
# calls (so its indexes grow, fold and re-sort as a running broker's do), answer alike,
# and the totals equal the runs' and records' own sums.

NOW_MS = 1_800_000_000_000
DAY_MS = 86_400_000
WINDOWS = (3_600_000, DAY_MS, 366 * DAY_MS)


def _answers(broker: Broker) -> list[object]:
    v = broker.national
    out: list[object] = []
    for w in WINDOWS:
        out += [v.overview(w), v.time_series(w, 0), v.center("c0003", w)]
    out.append(v.time_series(DAY_MS, 600_000))
    return out


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path_factory.mktemp("national-index") / "broker.db")
    asyncio.run(fill(store, n_centers=12, n_jobs=600, now_ms=NOW_MS))
    yield store
    store.close()


def test_indexed_figures_equal_after_a_load_and_when_built_run_by_run(
    small_store: SqliteStore,
) -> None:
    rng = random.Random(3)
    loaded = Broker(small_store, clock=ManualClock(NOW_MS))
    loaded.load()
    snapshot = small_store.load()
    claims = list(snapshot.claims)
    records = usage_records(claims, NOW_MS)
    corrected = dataclasses.replace(
        records[0],
        record_id="fix-1",
        kind=RecordKind.CORRECTION,
        refs=records[0].record_id,
        offset_s=0,
        energy_wh=records[0].energy_wh + 7,
    )
    loaded.national.note_usage([*records, corrected])

    grown = Broker(small_store, clock=ManualClock(NOW_MS))
    grown.jobs.load(snapshot)
    grown.centers.load(snapshot)
    rng.shuffle(claims)
    arriving = records[:]
    rng.shuffle(arriving)
    for i, record in enumerate(claims):
        if record.ended_at_ms is not None:  # seen first while it ran, then ended
            grown.claims.note(dataclasses.replace(record, ended_at_ms=None))
        grown.claims.note(record)
        if i % 150 == 0:
            _answers(grown)
            grown.clock.advance(REUSE_MS)  # type: ignore[attr-defined]
    half = len(arriving) // 2
    grown.national.note_usage(arriving[:half])
    _answers(grown)  # the per-step sums are kept from here and updated as records come
    grown.national.note_usage([*arriving[half:], corrected])
    grown.clock.advance(REUSE_MS)  # type: ignore[attr-defined]
    now = grown.clock.now_ms()
    loaded.clock.advance(now - loaded.clock.now_ms())  # type: ignore[attr-defined]
    assert _answers(grown) == _answers(loaded)

    # The totals equal the runs' and the records' own sums.
    everything = loaded.national.overview(366 * DAY_MS).totals
    ran = [r for r in claims if r.started_at_ms is not None]
    busy_ms = sum(
        r.devices * ((r.ended_at_ms or now) - r.started_at_ms)
        for r in ran
        if r.started_at_ms is not None
    )
    assert everything.device_seconds == busy_ms // 1000
    assert everything.jobs_done == loaded.jobs.count([JobState.SUCCEEDED])
    assert everything.jobs_running == loaded.jobs.count([JobState.RUNNING])
    in_force = [corrected, *records[1:]]
    assert everything.energy_wh == sum(r.energy_wh for r in in_force)
    assert everything.spend_minor == sum(r.charge_minor for r in in_force)
    series = loaded.national.time_series(DAY_MS * 2, 0)
    assert sum(s.carbon_g for s in series.steps) == sum(r.carbon_g for r in in_force)
    assert sum(s.jobs_finished for s in series.steps) == everything.jobs_done


def test_a_summary_carries_its_centers_places_and_older_ones_still_read(tmp_path: Path) -> None:
    pool = PoolCapacity(
        ref=PoolRef(center_id=CenterId("w1"), pool_id=PoolId("p")),
        region="CY",
        pool=make_center("w1", pools={"p": ("ascend-910", 8, 500)}).pools[0],
        free=8,
        pue_milli=1200,
        grid_g_co2_per_kwh=100,
    )
    place = Place(name="Chengdu 1", latitude=30.6, longitude=104.1)
    payload = summary_payload("CY", "h:1", [pool], {"w1": place, "gone": place})
    assert parse_summary("b", 1, 0, payload).places == {"w1": place}
    older = summary_payload("CY", "h:1", [pool])
    assert b"centers" not in older and parse_summary("b", 1, 0, older).places == {}
    # A broker that federates shows the peer's center where the peer says it is.
    store = SqliteStore(tmp_path / "home.db")
    try:
        home = Broker(store, clock=ManualClock(NOW_MS))
        home.load()
        peers = home.federate("broker-home", None, 60_000)
        assert peers.update("broker-west", 1, NOW_MS, payload)
        [shown] = home.national.overview(0).centers
        assert (shown.center_id, shown.broker, shown.name) == ("w1", "broker-west", "Chengdu 1")
        assert (shown.latitude, shown.longitude, shown.region) == (30.6, 104.1, "CY")
    finally:
        store.close()
    bad = json.loads(payload)
    bad["centers"]["w1"]["lat"] = 91.0
    with pytest.raises(InvalidArgument, match=r"latitude must be -90\.\.90, got 91\.0"):
        parse_summary("b", 1, 0, json.dumps(bad).encode())


def test_a_policy_file_that_is_not_text_is_one_line_before_any_call(tmp_path: Path) -> None:
    binary = tmp_path / "policy.json"
    binary.write_bytes(b'{"weights": \xff}')
    done = run_icx("policy", "set", str(binary), "--insecure", "--broker", "127.0.0.1:1")
    assert (done.returncode, done.stderr.strip()) == (
        2,
        f"icx: error: {binary} is not UTF-8 text (byte 12)",
    )


def test_wait_reasons_group_by_their_numbers_and_keep_accelerator_names() -> None:
    for model in CATALOGUE:
        assert reason_kind(f"no pool of {model} in any region") == (
            f"no pool of {model} in any region"
        )
        kinds = {
            reason_kind(
                f"no pool with {n} free devices of {model} >= {gb} GB in the allowed regions "
                f"CY, JJJ (most free: {most})"
            )
            for n, gb, most in ((4, 64, 2), (16, 80, 11))
        }
        assert kinds == {
            f"no pool with N free devices of {model} >= N GB in the allowed regions CY, JJJ "
            "(most free: N)"
        }
    assert reason_kind("MLU370-X8 in c0003/p2: 1,234.50 yuan (cost +1.20, carbon -0.30).") == (
        "MLU370-X8 in c0003/p2: N yuan (cost +N, carbon -N)."
    )
