"""The world the fuzz harness runs against: a real broker process and real node agents on
loopback, and the invariants it checks after every example.

Invariants (each broken one is a `Broken` with the name below):

- `alive`: no broker or agent process died.
- `status`: no call or stream ends with UNKNOWN or INTERNAL (INTERNAL is a bug).
- `unchanged`: a refused request leaves the store (`broker.db`) and the ledger
  (`broker.db.ledger`) as they were, read through SQL (`fingerprint`).
- `health`: grpc.health.v1 answers within 1 s (the call's deadline), polled throughout by
  a thread.
- `devices`: no device is held by a job that is not live (centers' offers against the
  jobs the broker says are claimed or running), and a cancelled job ends.
- `quiet`: no process logs an ERROR line or a traceback (what the broker answers with
  INTERNAL it also logs, and some errors are only logged).

Every call is made in someone's name, as in a real federation (mutual TLS, a throw-away
root of trust): a user of one of USER_TENANTS, or the coordinator for the methods only
it may call (broker.authz.RULES); each hostile agent stream presents the certificate of a
fuzzing center (strategies.FUZZ_CENTERS), whatever center its Hello names.

Beyond the five, from the issue's defects: `bounded` (an error message is short: a
refusal never echoes unbounded input, which gRPC turns into RESOURCE_EXHAUSTED),
`foreign` (no center changes a running job it does not hold), `durable` (an acknowledged
submit is in broker.db when the reply comes) and `idempotent` (a request id names one
job and one spec).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.authz import RULES
from cli.federation import LocalFederation
from core.types import CenterDescriptor
from icx.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    broker_pb2,
    broker_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    types_pb2,
)
from identity import Credentials, Role
from identity.tls import channel
from ledger import SignerKey
from tests.conftest import FAST_BROKER, make_center, wait_for
from tests.fuzz.known import known
from tests.fuzz.strategies import FUZZ_CENTERS, new_key

TENANT_METADATA = "x-icx-tenant"
# The tenants whose users make the calls (each its own certificate).
USER_TENANTS = ("default", "lab-a", "lab-b")
HEALTH_LIMIT_S = 1.0
# An error names the field and what was expected; it never echoes unbounded input.
MAX_DETAILS_CHARS = 1024
CALL_TIMEOUT_S = 10.0
# A server stream that follows a live job never ends by itself: read it this long.
WATCH_TIMEOUT_S = 1.0
SETTLE_TIMEOUT_S = 15.0
BAD_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
LIVE = (types_pb2.JOB_STATE_QUEUED, types_pb2.JOB_STATE_CLAIMED, types_pb2.JOB_STATE_RUNNING)
HOLDING = (types_pb2.JOB_STATE_CLAIMED, types_pb2.JOB_STATE_RUNNING)

# Columns that change without any request: heartbeats, offers, each round's explanation.
VOLATILE_COLUMNS = frozenset({"updated_at_ms", "last_seen_ms", "devices_free", "explanation"})
# Tables that follow from others (the Merkle tree's nodes and the checkpoints from the
# log's entries), and the ledger's evidence: a record refused because its id is already
# logged with other bytes is kept there on purpose (docs/ledger.md), outside the log.
VOLATILE_TABLES = frozenset({"checkpoints", "nodes", "sqlite_sequence", "conflicts"})
# Runs of the real agents that started and are not billed yet (fuzzing centers bill, or
# not, within their own stream).
UNBILLED = (
    "SELECT claim_id, job_id FROM claims WHERE started_at_ms IS NOT NULL"
    " AND billed_record_id = '' AND center_id IN ('FA', 'FB')"
)
# The last claims of ended jobs that ran, whose end is not on disk yet.
UNENDED = (
    "SELECT c.claim_id FROM claims c JOIN jobs j ON j.claim_id = c.claim_id"
    " WHERE j.state IN ('succeeded', 'failed', 'cancelled') AND c.ended_at_ms IS NULL"
    " AND EXISTS (SELECT 1 FROM events e WHERE e.job_id = c.job_id AND e.state = 'running')"
)
# Tables whose rows belong to a job (by its job_id column).
JOB_TABLES = frozenset({"jobs", "events", "logs", "claims"})

# The real centers: one with a pool the fuzzer's jobs fit, one with another accelerator.
CENTERS: tuple[CenterDescriptor, ...] = (
    make_center("FA", pools={"main": ("ascend-910", 4, 500)}),
    make_center("FB", region="YRD", pools={"h": ("nvidia-h800", 2, 2000)}),
)


class Broken(AssertionError):
    """An invariant broke: `invariant` names it, the message says how."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"[{invariant}] {detail}")
        self.invariant = invariant
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Rpc:
    """One unary or server-streaming method of a service, as the generated stub has it."""

    service: str
    name: str
    request: type[Any]
    server_streaming: bool

    @property
    def full_name(self) -> str:
        return f"{self.service}.{self.name}"

    @property
    def role(self) -> Role:
        """Who calls it: a user where users may (the rule of broker.authz), else the
        coordinator."""
        rule = RULES[f"/icx.v1.{self.service}/{self.name}"]
        return Role.USER if Role.USER in rule.roles else Role.COORDINATOR


def _rpcs(module: Any, service: str) -> list[Rpc]:
    methods = module.DESCRIPTOR.services_by_name[service].methods
    return [
        Rpc(
            service=service,
            name=m.name,
            request=getattr(module, m.input_type.name),
            server_streaming=m.server_streaming,
        )
        for m in methods
    ]


RPCS: tuple[Rpc, ...] = (
    *_rpcs(broker_pb2, "BrokerService"),
    *_rpcs(admin_pb2, "AdminService"),
    *_rpcs(ledger_pb2, "LedgerService"),
)


@dataclass(frozen=True, slots=True)
class Victim:
    job_id: str
    center_id: str
    claim_id: str
    attempts: int


@dataclass(slots=True)
class Outcome:
    """What a call gave: OK, or the status that refused it."""

    code: grpc.StatusCode
    details: str = ""
    reply: Any = None

    @property
    def refused(self) -> bool:
        return self.code != grpc.StatusCode.OK


# table -> {row hash: row preview}
Fingerprint = dict[str, dict[str, str]]


def _rows(rows: Iterable[tuple[Any, ...]]) -> dict[str, str]:
    """Each row by the hash of its repr, with a short preview for a diff."""
    out = {}
    for row in rows:
        text = repr(row)
        key = hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()[:16]
        out[key] = text[:160]
    return out


def _read_tables(
    path: Path, prefix: str, skip_jobs: frozenset[str], skip_claims: frozenset[str]
) -> Iterator[tuple[str, dict[str, str]]]:
    if not path.exists():
        return
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        with conn:  # one read transaction: every table from the same snapshot
            conn.execute("BEGIN")
            tables = [
                r[0]
                for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if r[0] not in VOLATILE_TABLES
            ]
            for table in sorted(tables):
                columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
                kept = [c for c in columns if c not in VOLATILE_COLUMNS]
                select = ", ".join(f'"{c}"' for c in kept)
                rows = conn.execute(f'SELECT {select} FROM "{table}"').fetchall()
                if table in JOB_TABLES and "job_id" in kept and skip_jobs:
                    at = kept.index("job_id")
                    rows = [r for r in rows if r[at] not in skip_jobs]
                if "record_id" in kept and skip_claims:
                    at = kept.index("record_id")
                    rows = [
                        r for r in rows if not any(str(r[at]).endswith(c) for c in skip_claims if c)
                    ]
                yield f"{prefix}{table}", _rows(rows)
    finally:
        conn.close()


def diff(before: Fingerprint, after: Fingerprint) -> str:
    """The tables that differ: row counts, and a few rows gone and come."""
    out = []
    for t in sorted(set(before) | set(after)):
        b, a = before.get(t, {}), after.get(t, {})
        if a == b:
            continue
        gone = [b[k] for k in b.keys() - a.keys()][:2]
        came = [a[k] for k in a.keys() - b.keys()][:2]
        out.append(f"{t}: {len(b)} -> {len(a)} rows (gone {gone}, came {came})")
    return "; ".join(out)


class HealthWatch:
    """Asks the broker's health service every 100 ms, each with a 1 s deadline, on its own
    thread; `take()` returns what went wrong since the last call."""

    def __init__(self, address: str, credentials: Credentials | None = None) -> None:
        self._address = address
        self._credentials = credentials
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._problems: list[str] = []
        self.checks = 0
        self.worst_s = 0.0
        self._paused = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fuzz-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """While the harness restarts a process it killed itself."""
        self._paused.set()
        try:
            yield
        finally:
            self._paused.clear()

    def take(self) -> list[str]:
        with self._lock:
            out, self._problems = self._problems, []
        return out

    def _run(self) -> None:
        chan = channel(self._address, self._credentials)
        stub = health_pb2_grpc.HealthStub(chan)
        try:
            while not self._stop.wait(0.1):
                if self._paused.is_set():
                    continue
                t0 = time.monotonic()
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_LIMIT_S)
                    problem = (
                        None
                        if reply.status == health_pb2.HealthCheckResponse.SERVING
                        else f"health said {reply.status}"
                    )
                except grpc.RpcError as exc:
                    problem = f"health check failed: {exc.code().name}"
                took = time.monotonic() - t0
                if self._paused.is_set():
                    continue
                # The deadline is the limit: a reply is in time when gRPC delivers it.
                # `took` also counts this thread waiting for the interpreter beside the
                # harness (1.22 s once on a busy machine, for a reply in time).
                self.checks += 1
                self.worst_s = max(self.worst_s, took)
                if problem is not None:
                    with self._lock:
                        self._problems.append(problem)
        finally:
            chan.close()


@dataclass(slots=True, repr=False)
class Harness:
    """A broker and the agents of CENTERS, started once and repaired (restarted) when an
    example killed one, so that the next example and hypothesis's shrinking start alive."""

    root: Path
    fed: LocalFederation = field(init=False)
    # The harness's own reads (every job, every center) are the coordinator's.
    broker: broker_pb2_grpc.BrokerServiceStub = field(init=False)
    health: HealthWatch = field(init=False)
    stubs: dict[str, Any] = field(init=False)
    # One channel per caller: (role, tenant) -> channel.
    _channels: dict[tuple[Role, str], grpc.Channel] = field(default_factory=dict)
    keys: dict[str, SignerKey] = field(default_factory=dict)
    examples: int = 0
    runs: int = 0
    dirty: bool = False
    calls: int = 0
    refusals: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    sample_details: dict[str, str] = field(default_factory=dict)
    # Runs that ended and were never billed, as of the last settle.
    # Runs of the real agents not billed when the last example settled: their records
    # may still come, so fingerprints leave their rows out.
    _unbilled: frozenset[tuple[str, str]] = frozenset()
    _seq: int = 0
    _log_offsets: dict[Path, int] = field(default_factory=dict)
    victim: Victim | None = None
    # (tenant, request id) -> the job and spec of the first accepted submit.
    submits: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)

    def start(self) -> None:
        self.runs += 1
        self.root.mkdir(parents=True, exist_ok=True)
        self.fed = LocalFederation(root=self.root / f"fed-{self.runs}", broker_args=FAST_BROKER)
        self.fed.root.mkdir()
        self.fed.start_broker(port=0)
        for center in CENTERS:
            self.fed.start_agent(center)
        self.stubs = self.stubs_of(Role.COORDINATOR)
        self.broker = self.stubs["BrokerService"]
        self.wait_centers()
        self.health = HealthWatch(self.fed.address, self.fed.credentials(Role.COORDINATOR))
        self.health.start()

    def stubs_of(self, role: Role, tenant: str = "default") -> dict[str, Any]:
        """The stubs of each service for a caller: a user of `tenant`, or the coordinator
        (tenant ignored). One channel per caller, kept until `stop`."""
        key = (role, tenant if role is Role.USER else "")
        chan = self._channels.get(key)
        if chan is None:
            chan = self._channels[key] = self.fed.channel(role, tenant=tenant)
        return {
            "BrokerService": broker_pb2_grpc.BrokerServiceStub(chan),
            "AdminService": admin_pb2_grpc.AdminServiceStub(chan),
            "LedgerService": ledger_pb2_grpc.LedgerServiceStub(chan),
        }

    def user(self, tenant: str) -> broker_pb2_grpc.BrokerServiceStub:
        """The broker as a user of `tenant` sees it (submits and cancels are a user's)."""
        stub: broker_pb2_grpc.BrokerServiceStub = self.stubs_of(Role.USER, tenant)["BrokerService"]
        return stub

    def center_credentials(self, center_id: str) -> Credentials | None:
        """A fuzzing center's membership (made and admitted on first use)."""
        return self.fed.credentials(Role.CENTER, center_id)

    def reset(self) -> None:
        """A fresh world (broker, database, ledger, agents) after an example broke this
        one: what it left (a stuck job, a held device) must not fail the next example,
        or hypothesis would shrink to an example that did nothing."""
        self.stop()
        self.victim = None
        self.submits = {}
        self._unbilled = frozenset()
        self.dirty = False
        self.start()

    @contextlib.contextmanager
    def example(self) -> Iterator[None]:
        """Around one example: start from a live (or, after a failure, fresh) world."""
        if self.dirty:
            self.reset()
        else:
            self.repair()
        self.examples += 1
        try:
            yield
        except Exception:
            self.dirty = True
            raise

    def __repr__(self) -> str:
        return f"Harness(root={str(self.root)!r})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))  # hypothesis prints dataclasses field by field otherwise

    def summary(self) -> str:
        """What the harness did: examples, calls, refusals, outcomes by kind."""
        lines = [
            f"{self.examples} examples, {self.calls} calls and stream messages,"
            f" {self.refusals} refused; health checked {self.health.checks} times,"
            f" worst {self.health.worst_s * 1000:.0f} ms; {len(self._unbilled)} runs of the"
            " real agents not billed"
        ]
        for k, n in sorted(self.outcomes.items()):
            lines.append(f"  {n:5d}  {k}")
            if k in self.sample_details:
                lines.append(f"         e.g. {self.sample_details[k]!r}")
        return "\n".join(lines)

    def stop(self) -> None:
        with contextlib.suppress(AttributeError):
            self.health.stop()
        for chan in self._channels.values():
            chan.close()
        self._channels.clear()
        with contextlib.suppress(AttributeError):
            self.fed.stop()

    @property
    def address(self) -> str:
        return self.fed.address

    @property
    def db(self) -> Path:
        return self.fed.db

    @property
    def ledger_db(self) -> Path:
        return self.fed.db.with_name(self.fed.db.name + ".ledger")

    # -- the world ---------------------------------------------------------------------

    def dead(self) -> list[str]:
        out = []
        if self.fed.broker is None or not self.fed.broker.alive():
            out.append("broker")
        out += [f"agent {c}" for c, child in self.fed.agents.items() if not child.alive()]
        return out

    def repair(self) -> None:
        """Restart whatever died (the broker on its database and port) and wait until the
        real centers are connected again."""
        dead = self.dead()
        if not dead:
            return
        with self.health.paused():
            if "broker" in dead:
                assert self.fed.broker is not None
                self.fed.broker.stop()
                self.fed.start_broker()
            for center in CENTERS:
                child = self.fed.agents.get(center.center_id)
                if child is not None and not child.alive():
                    child.stop()
                    self.fed.start_agent(center)
            self.wait_centers()
        self.health.take()

    def wait_centers(self, timeout_s: float = 20) -> None:
        wanted = {c.center_id for c in CENTERS}

        def ready() -> bool:
            try:
                reply = self.broker.ListCenters(broker_pb2.ListCentersRequest(), timeout=5)
            except grpc.RpcError:
                return False
            up = {c.center.center_id for c in reply.centers if c.connected and c.HasField("offer")}
            return wanted <= up

        wait_for(ready, timeout_s, "the real centers connected with offers")

    def center_key(self, center_id: str) -> SignerKey:
        """The key a center signs with: for a fuzzing center, the one its certificate
        binds (the one the broker admits); for any other id, the first one made for it."""
        if center_id in FUZZ_CENTERS:
            return self.fed.center_identity(center_id)[1]
        if center_id not in self.keys:
            self.keys[center_id] = new_key(center_id)
        return self.keys[center_id]

    def agent_key(self, center_id: str) -> SignerKey:
        """A real agent's own key (its file), for tests of what only it may do."""
        path = self.fed.root / "centers" / f"{center_id}.key"
        return SignerKey.parse(path.read_text().strip())

    # -- what the harness reads --------------------------------------------------------

    def fingerprint(
        self, skip_jobs: frozenset[str] = frozenset(), skip_claims: frozenset[str] = frozenset()
    ) -> Fingerprint:
        """Every table of the store and the ledger, less what changes on its own and less
        the rows of `skip_jobs` (accepted during this example, so still moving)."""
        skip_jobs = skip_jobs | {j for _, j in self._unbilled}
        skip_claims = skip_claims | {c for c, _ in self._unbilled}
        out: Fingerprint = {}
        out.update(_read_tables(self.db, "", skip_jobs, skip_claims))
        out.update(_read_tables(self.ledger_db, "ledger.", skip_jobs, skip_claims))
        return out

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(query, args).fetchall()
        finally:
            conn.close()

    def job_ids(self) -> list[str]:
        return [r[0] for r in self.sql("SELECT job_id FROM jobs ORDER BY submitted_at_ms DESC")]

    def claim_ids(self) -> list[str]:
        return [r[0] for r in self.sql("SELECT claim_id FROM claims ORDER BY claimed_at_ms DESC")]

    def record_ids(self) -> list[str]:
        conn = sqlite3.connect(f"file:{self.ledger_db}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute(
                "SELECT record_id FROM entries WHERE record_id IS NOT NULL ORDER BY idx DESC"
            ).fetchall()
        finally:
            conn.close()
        return [r[0] for r in rows]

    def checkpoint_note(self) -> str:
        try:
            reply = self.stubs["LedgerService"].GetCheckpoint(
                ledger_pb2.GetCheckpointRequest(), timeout=5
            )
        except grpc.RpcError:
            return ""
        return str(reply.note)

    def next_seq(self) -> int:
        """A fresh offer sequence number (above any a fuzzing center used before)."""
        self._seq += 1
        return self._seq

    def moving_states(self) -> list[str]:
        """Jobs queued, claimed or running on disk; but the victim."""
        rows = self.sql("SELECT job_id FROM jobs WHERE state IN ('queued', 'claimed', 'running')")
        return [r[0] for r in rows if r[0] not in self.kept_jobs()]

    def moving_jobs(self) -> frozenset[str]:
        """Jobs that may still change by themselves: queued, claimed or running, or whose
        run ended and is not billed yet; but the victim (which runs until cancelled)."""
        rows = self.sql(
            "SELECT job_id FROM jobs WHERE state IN ('queued', 'claimed', 'running')"
            " UNION SELECT job_id FROM claims"
            " WHERE started_at_ms IS NOT NULL AND billed_record_id = ''"
        )
        return frozenset(r[0] for r in rows) - self.kept_jobs()

    def claims_of(self, job_ids: Iterable[str]) -> frozenset[str]:
        ids = list(job_ids)
        if not ids:
            return frozenset()
        marks = ", ".join("?" for _ in ids)
        rows = self.sql(f"SELECT claim_id FROM claims WHERE job_id IN ({marks})", *ids)
        return frozenset(r[0] for r in rows)

    def live_jobs(self) -> list[types_pb2.Job]:
        reply = self.broker.ListJobs(broker_pb2.ListJobsRequest(states=LIVE), timeout=10)
        return list(reply.jobs)

    # -- calls ------------------------------------------------------------------------

    def call(
        self, rpc: Rpc, request: Any, tenant: str = "default", declared: str | None = None
    ) -> Outcome:
        """Call `rpc` with `request` on the raw stub, as a user of `tenant` (or as the
        coordinator, for a method only it may call), declaring the tenant `declared` in
        the x-icx-tenant header if given (the broker must go by the certificate, not by
        the header); the status, never an exception."""
        self.calls += 1
        method = getattr(self.stubs_of(rpc.role, tenant)[rpc.service], rpc.name)
        metadata = () if declared is None else ((TENANT_METADATA, declared),)
        try:
            if rpc.server_streaming:
                items = []
                stream = method(request, timeout=WATCH_TIMEOUT_S, metadata=metadata)
                try:
                    for item in stream:
                        items.append(item)
                except grpc.RpcError as exc:
                    # Following a live job: the stream outlives our deadline, by design.
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and items:
                        return Outcome(grpc.StatusCode.OK, reply=items)
                    raise
                return Outcome(grpc.StatusCode.OK, reply=items)
            reply = method(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
            return Outcome(grpc.StatusCode.OK, reply=reply)
        except grpc.RpcError as exc:
            code = exc.code()
            return Outcome(code, exc.details() or "")

    # -- the invariants ----------------------------------------------------------------

    def check_status(self, what: str, outcome: Outcome) -> None:
        key = f"{what} {outcome.code.name}"
        self.outcomes[key] += 1
        if outcome.details:
            self.sample_details.setdefault(key, outcome.details[:120])
        if outcome.code in BAD_CODES:
            self.fail("status", f"{what} gave {outcome.code.name}: {outcome.details[:300]!r}")
        echoed = outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata" in (
            outcome.details
        )
        if echoed or len(outcome.details) > MAX_DETAILS_CHARS:
            self.fail(
                "bounded",
                f"{what} gave {outcome.code.name} with {len(outcome.details)} chars:"
                f" {outcome.details[:200]!r}",
            )

    def fail(self, invariant: str, detail: str) -> None:
        """Raise Broken, unless it is a finding already reported and still open
        (known.py): that is counted and the example goes on."""
        open_finding = known(invariant, detail)
        if open_finding is None:
            raise Broken(invariant, detail)
        self.outcomes[f"known open finding: {open_finding.name}"] += 1

    def check_unchanged(self, what: str, before: Fingerprint, after: Fingerprint) -> None:
        if before != after:
            raise Broken("unchanged", f"{what} was refused but changed {diff(before, after)}")

    def check_alive(self) -> None:
        dead = self.dead()
        if dead:
            raise Broken("alive", f"died: {', '.join(dead)} (logs in {self.fed.root / 'logs'})")

    def check_health(self) -> None:
        problems = self.health.take()
        if problems:
            raise Broken("health", f"{len(problems)} slow or failed checks: {problems[:3]}")

    def device_problems(self) -> list[str]:
        """Pools whose offer holds more devices than the broker's live jobs there."""
        centers = self.broker.ListCenters(broker_pb2.ListCentersRequest(), timeout=10).centers
        held_by_jobs: dict[tuple[str, str], int] = {}
        for job in self.broker.ListJobs(
            broker_pb2.ListJobsRequest(states=HOLDING), timeout=10
        ).jobs:
            key = (job.center_id, job.pool_id)
            held_by_jobs[key] = held_by_jobs.get(key, 0) + job.spec.devices
        real = {c.center_id for c in CENTERS}
        problems = []
        for c in centers:
            if c.center.center_id not in real or not c.HasField("offer"):
                continue
            for pool in c.offer.pools:
                held = pool.devices_total - pool.devices_free
                live = held_by_jobs.get((c.center.center_id, pool.pool_id), 0)
                if held > live:
                    problems.append(
                        f"{c.center.center_id}/{pool.pool_id} holds {held} devices,"
                        f" live jobs there hold {live}"
                    )
        return problems

    def check_devices(self, timeout_s: float = 10) -> None:
        """A freed device reaches the offer a heartbeat or so later: wait for it."""
        problems: list[str] = []

        def fine() -> bool:
            nonlocal problems
            problems = self.device_problems()
            return not problems

        if not poll(fine, timeout_s):
            raise Broken("devices", "; ".join(problems))

    def let_run(self, job_ids: Iterable[str], timeout_s: float = 3) -> None:
        """Wait (a bounded time: some jobs fit no pool) until the jobs were placed and
        started or ended, so that their runs, their launch failures and their usage
        records happen before the example ends."""
        ids = list(job_ids)
        marks = ", ".join("?" for _ in ids)

        def moved() -> bool:
            rows = self.sql(
                f"SELECT COUNT(*) FROM jobs WHERE job_id IN ({marks})"
                " AND state IN ('queued', 'claimed')",
                *ids,
            )
            return int(rows[0][0]) == 0

        poll(moved, timeout_s)

    def settle(self, keep: frozenset[str] = frozenset()) -> None:
        """Cancel every live job (but `keep`), wait until each has ended and every run
        that started is billed or given up on, so the next example starts quiet."""
        for job in self.live_jobs():
            if job.job_id not in keep:
                with contextlib.suppress(grpc.RpcError):
                    self.user(job.tenant).CancelJob(
                        broker_pb2.CancelJobRequest(job_id=job.job_id), timeout=10
                    )
        stuck: list[str] = []

        def ended() -> bool:
            nonlocal stuck
            stuck = [f"{j.job_id} ({j.state})" for j in self.live_jobs() if j.job_id not in keep]
            # The broker answers from memory before it commits: the disk must say so too.
            stuck += [f"{j} (on disk)" for j in self.moving_states() if j not in keep]
            return not stuck

        if not poll(ended, SETTLE_TIMEOUT_S):
            raise Broken("devices", f"cancelled jobs did not end: {', '.join(stuck)}")
        # A run's start is written with its end, after the job's end is committed: wait
        # (a bounded time) until the claims of the jobs that ran have their ends on disk.
        poll(lambda: not self.sql(UNENDED), 5)

        # A run's usage record comes after its end; a run never billed is not our concern
        # here, so this waits a bounded time for the runs that ended since the last time
        # and then goes on.
        def unbilled() -> frozenset[tuple[str, str]]:
            kept = keep | self.kept_jobs()
            return frozenset((c, j) for c, j in self.sql(UNBILLED) if j not in kept)

        poll(lambda: unbilled() <= self._unbilled, 5)
        self._unbilled = unbilled()

    # -- the victim: a real center's running job that hostile centers go after ---------

    def ensure_victim(self) -> Victim:
        """The victim job, running on FB (submitted again if an example ended it)."""
        from tests.fuzz.properties import VICTIM_TENANT, submit_victim

        if self.victim is not None and self._victim_now() == self.victim:
            return self.victim
        if self.victim is not None:
            with contextlib.suppress(grpc.RpcError):
                self.user(VICTIM_TENANT).CancelJob(
                    broker_pb2.CancelJobRequest(job_id=self.victim.job_id), timeout=10
                )
        job_id = submit_victim(self)
        self.victim = None
        found: Victim | None = None

        def running() -> bool:
            nonlocal found
            found = self._victim_now(job_id)
            return found is not None

        wait_for(running, 30, f"victim job {job_id} running")
        assert found is not None
        self.victim = found
        return found

    def _victim_now(self, job_id: str | None = None) -> Victim | None:
        job_id = job_id or (self.victim.job_id if self.victim else None)
        if job_id is None:
            return None
        rows = self.sql(
            "SELECT state, center_id, claim_id, attempts FROM jobs WHERE job_id = ?", job_id
        )
        if not rows or rows[0][0] != "running":
            return None
        _state, center, claim, attempts = rows[0]
        return Victim(job_id=job_id, center_id=center, claim_id=claim, attempts=attempts)

    def check_victim(self, victim: Victim) -> None:
        now = self._victim_now(victim.job_id)
        if now != victim:
            raise Broken("foreign", f"another center's running job changed: {victim} is now {now}")

    def kept_jobs(self) -> frozenset[str]:
        return frozenset({self.victim.job_id}) if self.victim else frozenset()

    def check_logs(self) -> None:
        """No process logged an error since the last check (an error the broker logs is
        one it did not expect)."""
        children = [self.fed.broker, *self.fed.agents.values()]
        for child in children:
            if child is None:
                continue
            seen = self._log_offsets.get(child.log_path, 0)
            with child.log_path.open("rb") as f:
                f.seek(seen)
                new = f.read()
            self._log_offsets[child.log_path] = seen + len(new)
            lines = new.decode("utf-8", "replace").splitlines()
            for i, line in enumerate(lines):
                if " ERROR " in line or line.startswith("Traceback"):
                    # the traceback that follows names the cause; keep its last lines
                    rest = lines[i + 1 :]
                    after = list(itertools.takewhile(lambda x: not _LOG_LINE.match(x), rest))
                    tail = "\n".join(after[-12:])
                    self.fail("quiet", f"{child.name} logged: {line[:300]}\n{tail}".rstrip())

    def check_world(self) -> None:
        """The invariants that hold between examples."""
        self.check_alive()
        self.check_health()
        self.check_devices()
        self.check_logs()


_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # a new record, not a traceback's line


def poll(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.05) -> bool:
    """Whether `predicate` came true within `timeout_s` (asked every `every_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(every_s)
