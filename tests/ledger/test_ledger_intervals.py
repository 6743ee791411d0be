"""A long run is billed in metering intervals: the records of a run chain (each names the
previous one and the seconds billed before it), they add up exactly to the one record of
the whole run, the audit checks the chain, and settlement and the tenant's bill count
every interval. Records are made by the agent's own metering (node_agent._metering)."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.types import CenterDescriptor, CenterId, Pool, PoolId
from ledger import InvalidRecord, LedgerStore, Log, Role, UsageRecord, canonical
from ledger._audit_rules import Rule, UsageRuleViolation, check_usage_rules
from ledger.bill import job_totals, tenant_bill
from ledger.records import RecordKind
from ledger.settlement import effective_records
from ledger.signing import sign_records
from node_agent._metering import (
    RunFacts,
    due_intervals,
    interval_record,
    usage_record,
    usage_records,
)
from tests.ledger.conftest import NOV_2026_MS, Parties

CENTER = "CN01"
TENANT = "tenant/lab"


def center(
    *, power_w: int = 310, price: int = 1234, pue_milli: int = 1317, grid: int = 581
) -> CenterDescriptor:
    return CenterDescriptor(
        center_id=CenterId(CENTER),
        name="Wuhan",
        region="HB",
        pue_milli=pue_milli,
        grid_g_co2_per_kwh=grid,
        pools=(
            Pool(
                pool_id=PoolId("p"),
                accelerator="ascend-910b",
                devices_total=64,
                devices_free=64,
                memory_gb=32,
                fp16_tflops=256,
                power_w=power_w,
                price_minor_per_device_hour=price,
            ),
        ),
    )


def facts(start_ms: int, end_ms: int, *, devices: int = 3, claim: str = "c-1") -> RunFacts:
    return RunFacts(
        claim_id=claim,
        job_id="job-1",
        tenant=TENANT,
        pool_id="p",
        devices=devices,
        started_at_ms=start_ms,
        ended_at_ms=end_ms,
    )


FIGURES = ("wall_s", "device_s", "energy_wh", "carbon_g", "charge_minor")


@settings(max_examples=300, deadline=None)
@given(
    whole_intervals=st.integers(0, 300),
    rest=st.floats(0, 1, exclude_max=True),
    interval_s=st.integers(1, 3 * 3600),
    devices=st.integers(1, 64),
    power_w=st.integers(1, 1500),
    price=st.integers(0, 100_000),
    pue_milli=st.integers(1000, 3000),
    grid=st.integers(0, 2000),
    start_ms=st.integers(NOV_2026_MS, NOV_2026_MS + 10**9),
)
def test_a_runs_interval_records_add_up_to_its_one_record(
    whole_intervals: int,
    rest: float,
    interval_s: int,
    devices: int,
    power_w: int,
    price: int,
    pue_milli: int,
    grid: int,
    start_ms: int,
) -> None:
    """Runs of up to 300 intervals of up to 3 hours (37 days), any remainder."""
    duration_ms = (whole_intervals * interval_s + rest * interval_s) * 1000
    site = center(power_w=power_w, price=price, pue_milli=pue_milli, grid=grid)
    run = facts(start_ms, start_ms + int(duration_ms), devices=devices)
    whole = usage_record(site, run)
    records = usage_records(site, run, interval_s)
    for name in FIGURES:
        assert sum(getattr(r, name) for r in records) == getattr(whole, name), name
    # A chain: contiguous, each names the one before, offsets count what came before.
    assert records[0].record_id == f"{CENTER}/c-1" and not records[0].refs
    assert records[0].start_ms == start_ms
    for n, (before, after) in enumerate(itertools.pairwise(records), start=2):
        assert after.record_id == f"{CENTER}/c-1/{n}" and after.refs == before.record_id
        assert after.start_ms == before.end_ms
        assert after.offset_s == before.offset_s + before.wall_s
        assert before.wall_s == interval_s  # every interval but the last is whole
    assert records[-1].end_ms > records[-1].start_ms or len(records) == 1
    assert check_usage_rules(enumerate(records, start=1)) == len(records)


def test_metering_as_it_goes_gives_the_same_records_as_metering_at_the_end() -> None:
    """The agent meters whole intervals at its ticks, then the rest at the end; the
    records are the same bytes as those of the ended run split at once."""
    site, start = center(), NOV_2026_MS + 1_234
    end = start + 10_500
    metered, n, to_ms = [], 0, start
    for now in (start + 999, start + 2_100, start + 2_100, start + 7_000):
        for i in due_intervals(started_at_ms=start, metered_n=n, metered_to_ms=to_ms,
                               until_ms=now, interval_s=2, final=False):  # fmt: skip
            metered.append(interval_record(site, facts(start, i.end_ms), i))
            n, to_ms = i.n, i.end_ms
    rest = due_intervals(started_at_ms=start, metered_n=n, metered_to_ms=to_ms, until_ms=end,
                         interval_s=2, final=True)  # fmt: skip
    metered += [interval_record(site, facts(start, end), i) for i in rest]
    assert [r.canonical() for r in metered] == [
        r.canonical() for r in usage_records(site, facts(start, end), 2)
    ]
    assert [(r.start_ms - start, r.end_ms - start) for r in metered] == [
        (0, 2000), (2000, 4000), (4000, 6000), (6000, 8000), (8000, 10000),
    ]  # fmt: skip  # the last half second bills nothing (wall seconds are whole)


def test_a_run_that_never_reached_an_interval_has_the_one_record_it_always_had() -> None:
    site, start = center(), NOV_2026_MS
    [only] = usage_records(site, facts(start, start + 700), 900)
    assert only == usage_record(site, facts(start, start + 700))
    assert only.record_id == f"{CENTER}/c-1" and "offset_s" not in only.to_json()


def test_an_interval_record_checks_its_chain_fields_and_its_charge() -> None:
    site, start = center(), NOV_2026_MS
    first, second, _ = usage_records(site, facts(start, start + 2_500_000), 1000)
    with pytest.raises(InvalidRecord, match=r"must name the previous interval of its run"):
        dataclasses.replace(second, refs="")
    with pytest.raises(InvalidRecord, match=r"continues 'CN01/c-1' must have offset_s > 0"):
        dataclasses.replace(first, refs=f"{CENTER}/c-1", record_id=f"{CENTER}/c-1/2")
    with pytest.raises(InvalidRecord, match=r"charge_minor must be the charge of the run's first"):
        dataclasses.replace(second, charge_minor=second.charge_minor + 1)
    with pytest.raises(InvalidRecord, match=r"offset_s is left out when 0"):
        UsageRecord.from_json({**first.to_json(), "offset_s": 0})
    assert UsageRecord.from_json(canonical.decode(second.canonical())) == second


def _chain(n: int = 4, interval_s: int = 600) -> list[UsageRecord]:
    run = facts(NOV_2026_MS, NOV_2026_MS + n * interval_s * 1000 - 1)
    return usage_records(center(), run, interval_s)


def _broken(records: list[UsageRecord]) -> UsageRuleViolation:
    with pytest.raises(UsageRuleViolation) as caught:
        check_usage_rules(enumerate(records, start=1))
    return caught.value


def test_the_audit_passes_a_chain_and_names_a_broken_one() -> None:
    one, two, three, four = _chain()
    assert check_usage_rules(enumerate([one, two, three, four], start=1)) == 4

    shifted = dataclasses.replace(
        three, start_ms=three.start_ms + 1000, end_ms=three.end_ms + 1000
    )  # a gap of a second between two and three
    bad = _broken([one, two, shifted])
    assert (bad.rule, bad.index) == (Rule.INTERVAL_CHAIN, 3)
    assert "previous interval ends at" in str(bad) and "(a gap)" in str(bad)

    early = dataclasses.replace(three, start_ms=three.start_ms - 1000, end_ms=three.end_ms - 1000)
    assert "(an overlap)" in str(_broken([one, two, early]))

    fork = dataclasses.replace(three, record_id=f"{CENTER}/c-1/3b")
    bad = _broken([one, two, three, fork])
    assert (bad.rule, bad.index) == (Rule.INTERVAL_CHAIN, 4)
    assert "a run does not fork" in str(bad)

    skipped = _broken([one, three])  # refs names an interval never logged
    assert skipped.rule is Rule.INTERVAL_CHAIN and "not earlier in the log" in str(skipped)

    other_job = dataclasses.replace(two, job_id="job-2")
    assert "job_id must stay 'job-1'" in str(_broken([one, other_job]))


def test_two_runs_of_one_job_that_overlap_are_the_same_run_billed_twice() -> None:
    site = center()
    first = usage_records(site, facts(NOV_2026_MS, NOV_2026_MS + 3_500, claim="c-1"), 1)
    again = usage_records(site, facts(NOV_2026_MS + 2_000, NOV_2026_MS + 4_000, claim="c-2"), 1)
    bad = _broken([*first, *again])
    assert bad.rule is Rule.NO_OVERLAPPING_RUNS and bad.index == len(first) + 1
    after = usage_records(site, facts(NOV_2026_MS + 3_000, NOV_2026_MS + 5_000, claim="c-3"), 1)
    assert check_usage_rules(enumerate([*first, *after], start=1)) == len(first) + len(after)


@pytest.fixture
def chained_log(tmp_path: Path, parties: Parties) -> Log:
    """A log holding a run of 4 intervals and a second job's single record, all in
    2026-11, and a first interval of a run that ends in 2026-12."""
    log = Log.create(LedgerStore(tmp_path / "l.db"), parties.log_key)
    log.admit(CENTER, Role.CENTER, parties.wuhan.verifier)
    log.append(sign_records(_chain(), parties.wuhan))
    other = usage_record(center(), dataclasses.replace(facts(NOV_2026_MS, NOV_2026_MS + 9_000),
                                                       claim_id="c-9", job_id="job-9"))  # fmt: skip
    log.append(sign_records([other], parties.wuhan))
    dec = NOV_2026_MS + 30 * 86_400_000  # 2026-12-01
    late_run = dataclasses.replace(facts(dec - 1_500_000, dec + 1_000_000), claim_id="c-5",
                                   job_id="job-5")  # fmt: skip
    late = usage_records(center(), late_run, 1000)
    log.append(sign_records(late, parties.wuhan))
    log.checkpoint()
    return log


def test_settlement_and_the_tenants_bill_count_every_interval(chained_log: Log) -> None:
    log = chained_log
    statement, _ = log.settle("2026-11", party=TENANT)
    size, bill = log.bill("2026-11", TENANT)
    mine = statement.totals[TENANT]
    assert sum(j.charge_minor for j in bill) == mine.paid_minor > 0
    assert sum(j.device_s for j in bill) == mine.device_s_consumed
    assert sum(j.records for j in bill) == mine.records == 4 + 1 + 1  # c-5's first interval
    assert size == log.size
    [job1] = [j for j in bill if j.job_id == "job-1"]
    whole = usage_record(center(), facts(NOV_2026_MS, NOV_2026_MS + 4 * 600_000 - 1))
    assert (job1.records, job1.device_s, job1.energy_wh, job1.carbon_g, job1.charge_minor) == (
        4, whole.device_s, whole.energy_wh, whole.carbon_g, whole.charge_minor,
    )  # fmt: skip
    december = log.bill("2026-12", TENANT)[1]
    assert [(j.job_id, j.records) for j in december] == [("job-5", 2)]  # c-5's other two
    assert log.audit().records == 4 + 1 + 3


def test_a_bill_refuses_a_bad_period_or_tenant(chained_log: Log) -> None:
    records = list(chained_log.records())
    with pytest.raises(InvalidRecord, match=r"period must be YYYY-MM, got '2026-13'"):
        tenant_bill(records, period="2026-13", consumer=TENANT, size=chained_log.size)
    with pytest.raises(InvalidRecord, match=r"tenant must be 1..128"):
        tenant_bill(records, period="2026-11", consumer="a b", size=chained_log.size)


def test_job_totals_take_a_correction_in_place_of_the_interval_it_corrects() -> None:
    one, two = _chain(2)
    fixed = dataclasses.replace(
        two, record_id=f"{CENTER}/fix-2", kind=RecordKind.CORRECTION, refs=two.record_id,
        energy_wh=two.energy_wh + 5,
    )  # fmt: skip
    effective = effective_records([(1, one), (2, two), (3, fixed)], 4)
    [totals] = job_totals(effective.values())
    assert totals.energy_wh == one.energy_wh + two.energy_wh + 5 and totals.records == 2
