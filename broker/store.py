"""The broker's store contract: the named operations every store implements.

The broker's memory is the working copy; the store is the truth. Writes are enqueued in
the order the broker changed its memory and return a future that resolves after the
commit that includes them, so a reply that depends on a write is sent only once it is
durable (a submit is acknowledged after its commit). A store may group concurrent writes
into one commit; it must keep their order.

Values in, values out: a store takes and returns domain values (core.types) and keeps
them in domain columns; neither protobuf nor a database driver crosses this interface.
Every implementation passes the contract suite in tests/store_contract.py.

Implementations: `broker.sqlite_store.SqliteStore` (the embedded default). A PostgreSQL
store plugs in here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from broker.claims import ClaimRecord
from core.errors import FailedPrecondition
from core.national import PolicyVersion
from core.types import CenterDescriptor, Job, JobEvent, JobId, LogChunk

# The schema this code reads and writes. A store refuses a newer one, and an older one
# until it is migrated (`icx broker migrate`).
SCHEMA_VERSION = 5


class SchemaError(FailedPrecondition):
    """The store's schema is not the one this broker uses."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredJob:
    job: Job
    request_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredCenter:
    center: CenterDescriptor
    first_seen_ms: int
    last_seen_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything the broker loads on start."""

    jobs: Sequence[StoredJob] = ()
    centers: Sequence[StoredCenter] = ()
    # The last event and log sequence number of each job that has any.
    event_seq: dict[JobId, int] = field(default_factory=dict)
    log_seq: dict[JobId, int] = field(default_factory=dict)
    # The bytes of output kept for each job that has any.
    log_bytes: dict[JobId, int] = field(default_factory=dict)
    claims: Sequence[ClaimRecord] = ()
    # The coordinator's policy changes, oldest first (version 1, 2, ...).
    policy_changes: Sequence[PolicyVersion] = ()


class Store(Protocol):
    """See the module docstring. Writes return futures resolved after their commit;
    reads see only committed data."""

    @property
    def location(self) -> str:
        """Where the data lives, for logs (a path or a database name, no secrets)."""
        ...

    def schema_version(self) -> int:
        """The schema version the store holds now (0 for one that predates versions)."""
        ...

    def load(self) -> Snapshot: ...

    def insert_job(self, job: Job, event: JobEvent, request_id: str = "") -> asyncio.Future[None]:
        """A new job and its first event, in one commit. A (tenant, request_id) already
        stored fails the future with FailedPrecondition and stores nothing."""
        ...

    def update_job(self, job: Job, event: JobEvent | None = None) -> asyncio.Future[None]:
        """The job's new state and its event, in one commit; NotFound if no such job."""
        ...

    def insert_log(self, chunk: LogChunk) -> asyncio.Future[None]:
        """A chunk of a job's output; a chunk already stored (same job and seq) is kept."""
        ...

    def upsert_center(self, center: CenterDescriptor, at_ms: int) -> asyncio.Future[None]:
        """A center's descriptor as it last connected (first seen kept)."""
        ...

    def put_claim(self, record: ClaimRecord) -> asyncio.Future[None]:
        """What the broker saw of a claim, as it last changed (keyed by claim id)."""
        ...

    def put_policy_change(self, change: PolicyVersion) -> asyncio.Future[None]:
        """A new policy version: `change.version` must be one more than the latest stored
        (1 for the first), else the future fails with FailedPrecondition and nothing is
        stored."""
        ...

    def events_after(self, job_id: JobId, seq: int) -> list[JobEvent]: ...

    def logs_after(self, job_id: JobId, seq: int) -> list[LogChunk]: ...

    def close(self) -> None:
        """Finish pending writes and release the store."""
        ...
