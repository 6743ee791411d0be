"""The bounded fuzz run of `make test`: generated requests to every RPC and generated
agent streams against one real broker and two real agents (module-scoped, to keep it
cheap), each example followed by the invariants of harness.py. Derandomized, so CI runs
the same examples every time; `python -m bench fuzz --minutes N` runs the same
properties with fresh randomness for as long as asked."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import Harness
from tests.fuzz.properties import rpc_example, stream_example

# The budget: under a minute on two cores (most of it the broker's own work).
RPC_EXAMPLES = int(os.environ.get("ICX_FUZZ_RPC_EXAMPLES", "200"))
STREAM_EXAMPLES = int(os.environ.get("ICX_FUZZ_STREAM_EXAMPLES", "160"))
BOUNDED = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
    # Explaining re-runs every example many times: too slow against real processes.
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(root=Path(tmp_path_factory.mktemp("fuzz")))
    try:
        h.start()
        yield h
        print(h.summary())
    finally:
        h.stop()


@settings(BOUNDED, max_examples=RPC_EXAMPLES)
@given(data=st.data())
def test_every_rpc_holds_the_invariants(harness: Harness, data: st.DataObject) -> None:
    rpc_example(harness, data)


@settings(BOUNDED, max_examples=STREAM_EXAMPLES)
@given(data=st.data())
def test_hostile_agent_streams_hold_the_invariants(harness: Harness, data: st.DataObject) -> None:
    stream_example(harness, data)
