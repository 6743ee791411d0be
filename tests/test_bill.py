"""The user's bill (`icx bill`, and the bill in `icx status`): a job's records as the
ledger holds them, with totals and the commands that prove each; a tenant's month whose
totals are its settlement; bad input refused with a clear error and nothing changed.
One real federation for the module: a broker, one center metering every second, jobs
of two tenants."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from cli.federation import LocalFederation
from core.states import JobState
from core.types import JobSpec
from icx.v1 import ledger_pb2, ledger_pb2_grpc
from identity import Role
from ledger import SignedRecord
from tests.conftest import FAST_BROKER, make_center, run_icx, wait_centers, wait_for

TENANT, OTHER = "lab-bill", "lab-other"


@dataclass
class Billed:
    federation: LocalFederation
    jobs: Sequence[str]  # TENANT's
    other_job: str  # OTHER's
    user: Path  # TENANT's user folder
    coordinator: Path
    period: str  # the month the long job's last record is charged in
    in_period: frozenset[str]  # TENANT's jobs with a record charged in `period`

    def icx(self, *args: str, identity: Path | None = None) -> Any:
        return run_icx(*args, "--broker", self.federation.address,
                       identity=identity or self.user)  # fmt: skip


def _sleep(seconds: float) -> JobSpec:
    return JobSpec(accelerator="any", devices=2, estimated_s=60, command=("sleep", str(seconds)))


@pytest.fixture(scope="module")
def billed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Billed]:
    root = tmp_path_factory.mktemp("bill") / "fed"
    with LocalFederation(root=root, broker_args=FAST_BROKER) as fed:
        fed.start_agent(
            make_center("CB", pools={"p": ("ascend-910", 8, 36_000)}), "--metering-interval-s", "1"
        )
        with fed.client(TENANT) as user, fed.client(OTHER) as other:
            wait_centers(user, 1)
            jobs = [user.submit(_sleep(3.4)).job_id, user.submit(_sleep(1.2)).job_id]
            other_job = other.submit(_sleep(1.2)).job_id

            def settled() -> bool:
                ended = all(user.get_job(j).state == JobState.SUCCEEDED for j in jobs)
                outbox = fed.root / "work" / "CB" / "usage-outbox"
                return (
                    ended
                    and other.get_job(other_job).state.terminal
                    and (not list(outbox.glob("*.entry")))
                )

            wait_for(settled, 40, "the jobs ended and their usage logged")
            # The period from the records' own charge times (not the clock's month now).
            charged = {j: [r.record.end_ms for r in user.job_records(j)] for j in jobs}
        period = _month(charged[jobs[0]][-1])
        yield Billed(
            period=period,
            in_period=frozenset(
                j for j, ends in charged.items() if any(_month(e) == period for e in ends)
            ),
            federation=fed,
            jobs=jobs,
            other_job=other_job,
            user=fed.member(f"{TENANT}.user", Role.USER, tenant=TENANT),
            coordinator=fed.authority.folder / "coordinator",
        )


def _month(at_ms: int) -> str:
    return time.strftime("%Y-%m", time.gmtime(at_ms / 1000))


def test_a_jobs_bill_is_its_records_as_the_ledger_holds_them(billed: Billed) -> None:
    long_job = billed.jobs[0]
    done = billed.icx("bill", long_job, "--json")
    assert done.returncode == 0, done.stderr
    bill = json.loads(done.stdout)
    assert bill["job_id"] == long_job and bill["tenant"] == TENANT
    records = bill["records"]
    assert len(records) >= 3  # 3.4 s metered every second
    with billed.federation.client(TENANT) as user:
        for r in records:
            # The same entry, at the same index, as the ledger proves it.
            proof = user.prove(record_id=r["record_id"])
            assert proof.index == r["index"]
            logged = SignedRecord.from_entry(proof.leaf).record
            assert logged.job_id == long_job and logged.consumer == TENANT
            for name in ("refs", "start_ms", "end_ms", "wall_s", "offset_s", "device_s",
                         "energy_wh", "carbon_g", "unit_price_minor", "charge_minor"):  # fmt: skip
                assert r[name] == getattr(logged, name), name
            assert r["prove"].startswith(f"icx ledger prove {r['record_id']} --broker ")
    [totals] = bill["totals"]
    assert totals["currency"] == "CNY" and totals["records"] == len(records)
    for name in ("device_s", "energy_wh", "carbon_g", "charge_minor"):
        assert totals[name] == sum(r[name] for r in records), name

    text = billed.icx("bill", long_job)
    assert text.returncode == 0, text.stderr
    assert "device-hours" in text.stdout and " kWh" in text.stdout and "kg CO2" in text.stdout
    assert f"{totals['charge_minor'] // 100}." in text.stdout and "CNY" in text.stdout
    # The commands for the first and the last record; --json has every one.
    for r in (records[0], records[-1]):
        assert r["prove"] in text.stdout and r["verify"] in text.stdout
    assert records[1]["prove"] not in text.stdout
    assert f"the other {len(records) - 2} the same way" in text.stdout

    status = billed.icx("status", long_job, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["bill"] == bill
    shown = billed.icx("status", long_job)
    assert "\nbill\n" in shown.stdout and "device-hours" in shown.stdout


def test_a_tenants_month_is_its_settlement(billed: Billed) -> None:
    period = billed.period
    _ledger_size(billed)  # a checkpoint over every record: the bill reads the latest one
    done = billed.icx("bill", "--period", period, "--json")
    assert done.returncode == 0, done.stderr
    bill = json.loads(done.stdout)
    assert bill["tenant"] == TENANT and bill["currency"] == "CNY"
    assert sorted(j["job_id"] for j in bill["jobs"]) == sorted(billed.in_period)

    settled = billed.icx("settle", "--period", period, "--json")
    assert settled.returncode == 0, settled.stderr
    statement = json.loads(settled.stdout)
    [mine] = statement["parties"]
    assert statement["party"] == TENANT
    assert bill["totals"]["charge_minor"] == mine["paid_minor"] > 0
    assert bill["totals"]["device_s"] == mine["device_s_consumed"]
    assert bill["totals"]["records"] == statement["records"]
    assert bill["checkpoint_size"] == statement["checkpoint"]["size"]

    # A coordinator names the tenant and reads the same bill.
    named = billed.icx("bill", "--period", period, "--tenant", TENANT, "--json",
                       identity=billed.coordinator)  # fmt: skip
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["jobs"] == bill["jobs"]
    text = billed.icx("bill", "--period", period)
    assert text.returncode == 0 and "TOTAL" in text.stdout and f"period {period}" in text.stdout


def _ledger_size(billed: Billed) -> int:
    with billed.federation.client(role=Role.COORDINATOR) as coordinator:
        return int(coordinator.checkpoint().splitlines()[1])


@pytest.mark.parametrize(
    ("args", "as_coordinator", "code", "message"),
    [
        (("bill", "j-000000000000"), False, 4, "j-000000000000"),
        (("bill", "OTHER_JOB"), False, 1, "belongs to another tenant"),
        (("bill", "--period", "2026-13"), False, 2, "period must be YYYY-MM, got '2026-13'"),
        (("bill", "--period", "PERIOD", "--tenant", OTHER), False, 1,
         f"reads only its own tenant's bill, not '{OTHER}'"),
        (("bill", "--period", "PERIOD"), True, 2, "name the tenant whose bill to read"),
        (("bill",), False, 2, "give a JOB or --period YYYY-MM"),
        (("bill", "JOB", "--period", "PERIOD"), False, 2, "give a JOB or --period YYYY-MM"),
        (("bill", "JOB", "--tenant", OTHER), False, 2, "--tenant goes with --period"),
    ],
    ids=["unknown-job", "other-tenants-job", "bad-period", "other-tenants-bill",
         "coordinator-names-no-tenant", "nothing-named", "both-named", "tenant-for-a-job"],
)  # fmt: skip
def test_bad_input_is_refused_with_a_clear_error_and_changes_nothing(
    billed: Billed, args: tuple[str, ...], as_coordinator: bool, code: int, message: str
) -> None:
    before = _ledger_size(billed)
    fill = {"OTHER_JOB": billed.other_job, "JOB": billed.jobs[0], "PERIOD": billed.period}
    argv = [fill.get(a, a) for a in args]
    done = billed.icx(*argv, identity=billed.coordinator if as_coordinator else None)
    assert (done.returncode, done.stdout) == (code, "")
    assert done.stderr.startswith("icx: error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1  # one line, no traceback
    assert _ledger_size(billed) == before


def test_the_records_rpc_refuses_a_negative_page_start(billed: Billed) -> None:
    with billed.federation.channel(tenant=TENANT) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        request = ledger_pb2.ListJobRecordsRequest(job_id=billed.jobs[0], after_index=-1)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListJobRecords(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "after_index must be >= 0, got -1"
