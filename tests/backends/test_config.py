"""A center's `[backend]` table: what make_backend refuses, naming it, before the agent
starts; the Slurm backend's options checked against a real Slurm."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli.slurm_local import LocalSlurm
from core.errors import InvalidConfig
from node_agent.backends import make_backend
from node_agent.config import parse_backend
from tests.conftest import make_center
from tests.slurm_cluster import GRES

CENTER = make_center("CC", pools={"p": ("ascend-910", 8, 500)})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "kubernetes"}, "backend.kind must be one of process, slurm, docker, got 'ku"),
        (
            {"kind": "process", "partition": "gpu"},
            "kind = 'process' takes no options, got partition",
        ),
    ],
)
def test_a_backend_the_config_cannot_have_is_refused_naming_it(
    table: dict[str, object], message: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidConfig, match=re.escape(message)):
        make_backend(parse_backend({"backend": table}), tmp_path)
    assert make_backend(parse_backend({}), tmp_path).name == "process"


def slurm_table(cluster: LocalSlurm, **options: object) -> dict[str, object]:
    return {
        "kind": "slurm",
        "partition": cluster.partition,
        "slurm_conf": str(cluster.conf),
        "gres": {"p": GRES},
        **options,
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"partition": "nope"},
            "backend.partition 'nope': no such partition in Slurm (it has icx)",
        ),
        ({"partition": None}, "backend.partition is required for kind = 'slurm'"),
        (
            {"gres": {"p": "gpu:a100"}},
            "pool p: partition 'icx' has no GRES gpu:a100 (it has gpu:fake); set backend.gres",
        ),
        ({"gres": {"q": "gpu"}}, "backend.gres names pool 'q', which is no [[pools]]"),
        ({"gres": {"p": "gpu a"}}, "backend.gres.p must be 'name[:type]', got 'gpu a'"),
        ({"poll_s": 0}, "backend.poll_s must be 0.05..60 s, got 0"),
        ({"slurm_conf": "/nowhere/slurm.conf"}, "backend.slurm_conf /nowhere/slurm.conf: no such"),
        ({"queue": "x"}, "backend.kind = 'slurm' does not take queue (options: account, gres, "),
    ],
    ids=["partition", "no-partition", "gres", "gres-pool", "gres-spec", "poll", "conf", "extra"],
)
def test_a_slurm_backend_the_cluster_cannot_have_is_refused_naming_it(
    slurm_cluster: LocalSlurm, tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    table = {k: v for k, v in {**slurm_table(slurm_cluster), **changes}.items() if v is not None}
    jobs_before = slurm_cluster.jobs()
    with pytest.raises(InvalidConfig, match=re.escape(message)):
        make_backend(parse_backend({"backend": table}), tmp_path, CENTER)
    assert slurm_cluster.jobs() == jobs_before  # nothing submitted


def test_the_slurm_backend_counts_the_pools_devices_in_slurm(
    slurm_cluster: LocalSlurm, tmp_path: Path
) -> None:
    """The config says 8 devices; Slurm has 4 gpu:fake in the partition: Slurm's count
    is the pool's."""
    backend = make_backend(parse_backend({"backend": slurm_table(slurm_cluster)}), tmp_path, CENTER)
    assert backend.devices_total() == {"p": slurm_cluster.gpus}  # type: ignore[attr-defined]
