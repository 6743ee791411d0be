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
* `interval-chain`: a usage record that names another in `refs` is the next metering
  interval of that record's run: the record it continues is earlier in the log and is
  usage (not a correction, ack or dispute), of the same producer, consumer, job,
  accelerator, devices and unit price; the interval starts where that one ends (as in
  force: no gap, no overlap) and its `offset_s` is that one's `offset_s + wall_s`; and
  no other record continues the same one (a run does not fork);
* `no-overlapping-runs`: no two runs of one producer bill one job for overlapping time:
  the same run billed twice under two ids. A run is a record chain: a usage record, the
  intervals that continue it, and their corrections (each interval counted at its latest
  correction); it spans its first interval's start to its last one's end. Runs are
  half-open intervals `[start_ms, end_ms)`; two runs that start at the same instant
  overlap even if empty.

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
from ledger.records import CHARGING_KINDS, RecordKind, UsageRecord, continuation_error

__all__ = ["Rule", "UsageRuleViolation", "UsageRules", "check_usage_rules"]


class Rule(enum.StrEnum):
    RECORD_ID_NAMESPACE = "record-id-namespace"
    REFS_IN_LOG = "refs-in-log"
    REFS_USAGE = "refs-usage"
    CORRECTION_SAME_PRODUCER_AND_JOB = "correction-same-producer-and-job"
    ANSWER_FROM_CONSUMER = "answer-from-consumer"
    INTERVAL_CHAIN = "interval-chain"
    NO_OVERLAPPING_RUNS = "no-overlapping-runs"


class UsageRuleViolation(AuditError):
    """The record at `index` breaks `rule`."""

    def __init__(self, rule: Rule, message: str, *, index: int) -> None:
        super().__init__(f"rule {rule}: {message}", index=index)
        self.rule = rule


@dataclass(slots=True, kw_only=True)
class _Run:
    """A record chain's run as it stands: its first usage record's id, each interval's
    record in force (by its usage record's id), the span they cover, and the latest
    record put in force with where it sits in the log."""

    chain: str
    parts: dict[str, UsageRecord]
    start_ms: int
    end_ms: int
    latest: UsageRecord
    index: int

    def put(self, part: str, record: UsageRecord, index: int) -> None:
        replaced = self.parts.get(part)
        self.parts[part] = record
        self.latest, self.index = record, index
        if replaced is None:  # a new interval: the span grows
            self.start_ms = min(self.start_ms, record.start_ms)
            self.end_ms = max(self.end_ms, record.end_ms)
        else:  # a correction: the span is what the intervals in force cover
            self.start_ms = min(r.start_ms for r in self.parts.values())
            self.end_ms = max(r.end_ms for r in self.parts.values())


def _overlap(a: _Run, start_ms: int, end_ms: int) -> bool:
    return a.start_ms == start_ms or max(a.start_ms, start_ms) < min(a.end_ms, end_ms)


class UsageRules:
    """Checks records one at a time, in log order.

    `check(index, record)` requires that `index` grows from call to call and that the
    record's signature and id uniqueness were already checked (the audit does both first).
    """

    def __init__(self) -> None:
        self._records: dict[str, UsageRecord] = {}
        # A usage or correction id -> (the run's first usage id, the interval's usage id).
        self._chain_of: dict[str, tuple[str, str]] = {}
        self._runs: dict[tuple[str, str], list[_Run]] = {}  # (producer, job_id) -> runs
        self._continued: set[str] = set()  # usage ids that a later interval continues

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
        if record.kind is RecordKind.USAGE and record.refs:
            self._bill(index, record, self._continue(index, record), record_id)
        elif record.kind is RecordKind.USAGE:
            self._bill(index, record, record_id, record_id)
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
                chain, part = self._chain_of[record.refs]
                self._bill(index, record, chain, part)
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

    def _continue(self, index: int, record: UsageRecord) -> str:
        """Check that `record` is the next interval of the run its `refs` names; the
        run's chain."""
        where = f"record {record.record_id!r} continues {record.refs!r}"

        def broken(message: str) -> UsageRuleViolation:
            return UsageRuleViolation(Rule.INTERVAL_CHAIN, f"{where}: {message}", index=index)

        original = self._records.get(record.refs)
        if original is None:
            raise broken("that record is not earlier in the log")
        if original.kind is not RecordKind.USAGE:
            raise broken(f"that record is a {original.kind}, not usage")
        if record.refs in self._continued:
            raise broken("another record continues it already (a run does not fork)")
        chain, part = self._chain_of[record.refs]
        run = next(r for r in self._runs[(original.producer, original.job_id)] if r.chain == chain)
        reason = continuation_error(record, run.parts[part])  # the previous one as in force
        if reason:
            raise broken(reason)
        self._continued.add(record.refs)
        return chain

    def _bill(self, index: int, record: UsageRecord, chain: str, part: str) -> None:
        """Put `record` in force as interval `part` of the run `chain` and check the run
        against the producer's other runs of the same job."""
        key = (record.producer, record.job_id)
        runs = self._runs.get(key)
        self._chain_of[record.record_id] = (chain, part)
        if runs is None:  # the common case: a job's first run at this producer
            self._runs[key] = [_new_run(chain, part, record, index)]
            return
        mine: _Run | None = None
        for run in runs:
            if run.chain == chain:
                mine = run
        if mine is None:
            mine = _new_run(chain, part, record, index)
            runs.append(mine)
        else:
            mine.put(part, record, index)
        for run in runs:
            if run is not mine and _overlap(run, mine.start_ms, mine.end_ms):
                other = run.latest
                raise UsageRuleViolation(
                    Rule.NO_OVERLAPPING_RUNS,
                    f"record {record.record_id!r} bills job {record.job_id!r} at"
                    f" {record.producer!r} for {mine.start_ms}..{mine.end_ms}, which"
                    f" overlaps {other.record_id!r} (entry {run.index},"
                    f" {run.start_ms}..{run.end_ms}): the same run billed twice",
                    index=index,
                )


def _new_run(chain: str, part: str, record: UsageRecord, index: int) -> _Run:
    return _Run(
        chain=chain,
        parts={part: record},
        start_ms=record.start_ms,
        end_ms=record.end_ms,
        latest=record,
        index=index,
    )


def check_usage_rules(records: Iterable[tuple[int, UsageRecord]]) -> int:
    """Check (index, record) pairs in log order; return how many were checked. Raises
    UsageRuleViolation at the first record that breaks a rule."""
    rules = UsageRules()
    n = 0
    for index, record in records:
        rules.check(index, record)
        n += 1
    return n
