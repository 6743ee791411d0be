"""The job state machine's table."""

from __future__ import annotations

import pytest

from core.errors import FailedPrecondition
from core.states import TERMINAL, TRANSITIONS, JobState, check_transition

ALLOWED = {
    ("queued", "claimed"), ("queued", "cancelled"), ("queued", "failed"),
    ("claimed", "running"), ("claimed", "queued"), ("claimed", "cancelled"),
    ("claimed", "failed"),
    ("running", "succeeded"), ("running", "failed"), ("running", "cancelled"),
    ("running", "queued"),
}  # fmt: skip


@pytest.mark.parametrize("old", list(JobState))
@pytest.mark.parametrize("new", list(JobState))
def test_every_pair_is_allowed_exactly_when_the_design_says(old: JobState, new: JobState) -> None:
    if (old.value, new.value) in ALLOWED:
        check_transition("j-1", old, new)
    else:
        with pytest.raises(FailedPrecondition, match=f"job j-1 cannot go from {old} to {new}"):
            check_transition("j-1", old, new)


def test_terminal_states_have_no_way_out() -> None:
    assert {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED} == TERMINAL
    assert all(not TRANSITIONS[s] for s in TERMINAL)
    assert all(s.terminal == (s in TERMINAL) for s in JobState)
