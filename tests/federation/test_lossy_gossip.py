"""Gossip is a hint: with half of the gossip each broker receives discarded, every
broker's view of the others still converges, through pulls, and the drops are counted in
its metrics."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from cli.federation import LocalFederation
from core.types import JobSpec
from tests.conftest import make_center, wait_centers, wait_for
from tests.federation.regions import PEER_BROKER, metric, regions

NAMES = ("east", "central", "west")


@pytest.fixture(scope="module")
def lossy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalFederation]]:
    root = tmp_path_factory.mktemp("lossy")
    with regions(root, NAMES, (*PEER_BROKER, "--test-gossip-drop", "0.5")) as feds:
        for name, fed in feds.items():
            fed.start_agent(make_center(f"{name}-1", region=name))
            with fed.client() as c:
                wait_centers(c, 1)
        yield feds


def test_every_view_converges_through_pulls(lossy: dict[str, LocalFederation]) -> None:
    spec = JobSpec(accelerator="any", devices=1, estimated_s=60, command=(sys.executable, "-V"))
    for name, fed in lossy.items():
        with fed.client() as c:
            want = {f"{other}-1" for other in NAMES}
            wait_for(
                lambda c=c, want=want: {q.center_id for q in c.quote(spec)} >= want,
                30,
                f"{name} to see every center",
            )
    for fed in lossy.values():
        dropped = metric(fed, "icx_peering_dropped_total", '{reason="test_loss"}')
        assert dropped > 0  # the hook did discard gossip ...
        assert metric(fed, "icx_peering_pulls_total") > 0  # ... and pulls made up for it
