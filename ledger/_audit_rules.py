"""The usage rules an audit checks over the whole log, beyond signatures.

The broker accepts a center's record only if it matches what the broker saw of the claim
(docs/ledger.md, "What is billed, and what the broker accepts"). An auditor holds the log
and not the broker's database, so it checks what the log alone can show, for every
record in log order:

* `record-id-namespace`: a record's id is `PRODUCER/...`, in its signer's own name space
  (a center's usage is `CENTER/CLAIM`), so no party can take another's ids;
* `refs-in-log`: a correction, ack or dispute names a record earlier in the log;
* `refs-usage`: ... and that record is usage or a correction, not an ack or dispute;
* `correction-same-producer-and-job`: a correction replaces a record of its own producer,
  for the same consumer and the same job;
* `answer-from-consumer`: an ack or dispute is signed by the consumer of the record it is
  about, addressed to that record's producer;
* `no-overlapping-runs`: no two record chains (a usage record and its corrections, the
  latest in force) of one producer bill one job for overlapping time: the same run billed
  twice under two ids. Runs are half-open intervals `[start_ms, end_ms)`; two runs that
  start at the same instant overlap even if empty.

A record's own figures (wall time, device-seconds, charge) are checked when it is parsed
(`ledger.records.UsageRecord`), before these rules see it.

Pure: records in, the first violation out, as `UsageRuleViolation` (an `AuditError`
naming the entry index and the rule).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from ledger.errors import AuditError
from ledger.records import CHARGING_KINDS, RecordKind, UsageRecord

__all__ = ["Rule", "UsageRuleViolation", "UsageRules", "check_usage_rules"]


class Rule(enum.StrEnum):
    RECORD_ID_NAMESPACE = "record-id-namespace"
    REFS_IN_LOG = "refs-in-log"
    REFS_USAGE = "refs-usage"
    CORRECTION_SAME_PRODUCER_AND_JOB = "correction-same-producer-and-job"
    ANSWER_FROM_CONSUMER = "answer-from-consumer"
    NO_OVERLAPPING_RUNS = "no-overlapping-runs"


class UsageRuleViolation(AuditError):
    """The record at `index` breaks `rule`."""

    def __init__(self, rule: Rule, message: str, *, index: int) -> None:
        super().__init__(f"rule {rule}: {message}", index=index)
        self.rule = rule


@dataclass(slots=True, kw_only=True)
class _Run:
    """A record chain's run as it stands: its usage record's id, the latest record in
    force and where that record sits in the log."""

    chain: str
    latest: UsageRecord
    index: int


def _overlap(a: UsageRecord, b: UsageRecord) -> bool:
    return a.start_ms == b.start_ms or max(a.start_ms, b.start_ms) < min(a.end_ms, b.end_ms)


class UsageRules:
    """Checks records one at a time, in log order.

    `check(index, record)` requires that `index` grows from call to call and that the
    record's signature and id uniqueness were already checked (the audit does both first).
    """

    def __init__(self) -> None:
        self._records: dict[str, UsageRecord] = {}
        self._chain_of: dict[str, str] = {}  # a usage or correction id -> its usage id
        self._runs: dict[tuple[str, str], list[_Run]] = {}  # (producer, job_id) -> runs

    def check(self, index: int, record: UsageRecord) -> None:
        """Raise UsageRuleViolation if `record`, at `index`, breaks a rule given every
        record checked before it; otherwise remember it."""
        record_id, producer = record.record_id, record.producer
        cut = len(producer)
        # Messages are built only on failure: an audit checks every record of the log.
        if not (
            len(record_id) > cut + 1 and record_id[cut] == "/" and record_id.startswith(producer)
        ):
            raise UsageRuleViolation(
                Rule.RECORD_ID_NAMESPACE,
                f"record {record_id!r} must be named {producer}/..., in its producer's name space",
                index=index,
            )
        if record.kind is RecordKind.USAGE:
            self._bill(index, record, record_id)
        else:
            original = self._original(index, record)
            if record.kind is RecordKind.CORRECTION:
                if (original.producer, original.consumer, original.job_id) != (
                    record.producer,
                    record.consumer,
                    record.job_id,
                ):
                    raise UsageRuleViolation(
                        Rule.CORRECTION_SAME_PRODUCER_AND_JOB,
                        f"record {record_id!r} corrects {record.refs!r} (producer"
                        f" {original.producer!r}, consumer {original.consumer!r}, job"
                        f" {original.job_id!r}) but names"
                        f" producer {record.producer!r}, consumer {record.consumer!r}, job"
                        f" {record.job_id!r}",
                        index=index,
                    )
                self._bill(index, record, self._chain_of[record.refs])
            elif (original.consumer, original.producer) != (record.producer, record.consumer):
                raise UsageRuleViolation(
                    Rule.ANSWER_FROM_CONSUMER,
                    f"record {record_id!r}: only {original.consumer!r}, the consumer of"
                    f" {record.refs!r}, may {record.kind} it (to {original.producer!r}); signed by"
                    f" {record.producer!r} to {record.consumer!r}",
                    index=index,
                )
        self._records[record_id] = record

    def _original(self, index: int, record: UsageRecord) -> UsageRecord:
        where = f"record {record.record_id!r}"
        original = self._records.get(record.refs)
        if original is None:
            raise UsageRuleViolation(
                Rule.REFS_IN_LOG, f"{where}: refs {record.refs!r} is not earlier in the log",
                index=index,
            )  # fmt: skip
        if original.kind not in CHARGING_KINDS:
            raise UsageRuleViolation(
                Rule.REFS_USAGE,
                f"{where}: refs {record.refs!r} is a {original.kind}, not usage",
                index=index,
            )
        return original

    def _bill(self, index: int, record: UsageRecord, chain: str) -> None:
        """Put `record` in force for `chain` and check it against the producer's other
        runs of the same job."""
        key = (record.producer, record.job_id)
        runs = self._runs.get(key)
        if runs is None:  # the common case: a job's first run at this producer
            self._runs[key] = [_Run(chain=chain, latest=record, index=index)]
            self._chain_of[record.record_id] = chain
            return
        mine: _Run | None = None
        for run in runs:
            if run.chain == chain:
                mine = run
            elif _overlap(run.latest, record):
                other = run.latest
                raise UsageRuleViolation(
                    Rule.NO_OVERLAPPING_RUNS,
                    f"record {record.record_id!r} bills job {record.job_id!r} at"
                    f" {record.producer!r} for {record.start_ms}..{record.end_ms}, which"
                    f" overlaps {other.record_id!r} (entry {run.index},"
                    f" {other.start_ms}..{other.end_ms}): the same run billed twice",
                    index=index,
                )
        if mine is None:
            runs.append(_Run(chain=chain, latest=record, index=index))
        else:
            mine.latest, mine.index = record, index
        self._chain_of[record.record_id] = chain


def check_usage_rules(records: Iterable[tuple[int, UsageRecord]]) -> int:
    """Check (index, record) pairs in log order; return how many were checked. Raises
    UsageRuleViolation at the first record that breaks a rule."""
    rules = UsageRules()
    n = 0
    for index, record in records:
        rules.check(index, record)
        n += 1
    return n
