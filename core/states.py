"""The job state machine: one table of allowed transitions.

    queued -> claimed -> running -> succeeded | failed | cancelled
       ^         |          |
       +---------+----------+   requeue (claim refused or lapsed, center lost)

Any non-terminal state may also go to cancelled (the user) or failed (retry limit).
"""

from __future__ import annotations

import enum

from core.errors import FailedPrecondition


class JobState(enum.StrEnum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.CLAIMED, JobState.CANCELLED, JobState.FAILED}),
    JobState.CLAIMED: frozenset(
        {JobState.RUNNING, JobState.QUEUED, JobState.CANCELLED, JobState.FAILED}
    ),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def check_transition(job_id: str, old: JobState, new: JobState) -> None:
    """Raise FailedPrecondition unless old -> new is in the table."""
    if new not in TRANSITIONS[old]:
        raise FailedPrecondition(f"job {job_id} cannot go from {old} to {new}")
