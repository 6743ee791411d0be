"""A real Slurm for the tests: one cluster per test session (cli/slurm_local.py: munged,
slurmctld and `slurmd -D` as children of the test process, private ports, state folder,
munge socket and key, 4 fake GPUs `gpu:fake` on node `icxnode`, partition `icx`),
installed from Debian when absent, stopped at the end of the session.

Use the `slurm_cluster` fixture (import it into the test module). Every module that
imports it shares the one cluster: the first user starts it, the session's end stops it.
Tests leave the cluster as they found it (their jobs ended, the node up): `settle`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.debian import ensure_debian
from cli.slurm_local import PROGRAMS, LocalSlurm
from node_agent.backends._slurm import job_ended
from tests.conftest import wait_for

GRES = "gpu:fake"
_cluster: LocalSlurm | None = None
_users = 0


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurm]:
    global _cluster, _users
    if _cluster is None:
        started = time.monotonic()
        ensure_debian(PROGRAMS)
        installed = time.monotonic()
        # A short root: slurmd's and munged's socket paths must fit in sun_path.
        cluster = LocalSlurm(root=Path(tmp_path_factory.mktemp("slurm")))
        cluster.start()
        print(
            f"\nSlurm for the tests: packages {installed - started:.1f} s, "
            f"daemons up in {time.monotonic() - installed:.1f} s ({cluster.root})"
        )
        _cluster = cluster
    _users += 1
    try:
        yield _cluster
    finally:
        _users -= 1
        if _users == 0:
            _cluster.stop()
            _cluster = None


def settle(cluster: LocalSlurm, timeout_s: float = 20) -> None:
    """Cancel whatever jobs are left, wait until every job ended and the node is idle
    and up again (a test may have drained it)."""
    left = [str(j["job_id"]) for j in cluster.jobs() if not job_ended(j)]
    if left:
        cluster.run("scancel", *left)
    state = cluster.node_state()
    if state not in ("idle", "mixed", "allocated"):
        cluster.run("scontrol", "update", f"nodename={cluster.node}", "state=resume")
    wait_for(
        lambda: all(job_ended(j) for j in cluster.jobs()) and cluster.node_state() == "idle",
        timeout_s,
        "the Slurm node idle, every job ended",
    )
