"""The coordinator's policy file steers the broker's rounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.federation import LocalFederation
from core.states import JobState
from core.types import Job, JobSpec
from tests.conftest import FAST_BROKER, make_center, submit, wait_centers, wait_for

# A cheap coal-fired center and a slightly dearer hydro one.
COAL = make_center("NORTH", region="JJJ", grid=800, pools={"p": ("ascend-910", 8, 500)})
HYDRO = make_center("WEST", region="CY", grid=100, pools={"p": ("ascend-910", 8, 520)})
GREEN = {"weights": {"cost": 1, "carbon": 10}, "carbon_price_yuan_per_tonne": 200}


def _federation(root: Path, policy: dict[str, object] | None) -> LocalFederation:
    args = FAST_BROKER
    if policy is not None:
        path = root / "policy.json"
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(policy))
        args = (*args, "--policy", str(path))
    fed = LocalFederation(root=root, broker_args=args)
    fed.root.mkdir(parents=True, exist_ok=True)
    return fed


@pytest.mark.parametrize(("policy", "winner"), [(None, "NORTH"), (GREEN, "WEST")])
def test_carbon_weight_moves_the_job_to_the_clean_grid(
    tmp_path: Path, policy: dict[str, object] | None, winner: str
) -> None:
    fed = _federation(tmp_path / "fed", policy)
    try:
        fed.start_broker(port=0)
        for c in (COAL, HYDRO):
            fed.start_agent(c)
        with fed.client() as client:
            wait_centers(client, 2)
            spec = JobSpec(accelerator="ascend-910", devices=4, estimated_s=3600, command=("true",))
            ranked = client.quote(spec)
            assert ranked[0].center_id == winner
            job_id = submit(client, spec)

            def done() -> Job | None:
                job = client.get_job(job_id)
                return job if job.state == JobState.SUCCEEDED else None

            job = wait_for(done, 20, "the job")
            assert job.center_id == winner
    finally:
        fed.stop()


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ('{"weights": {"cost": -1}}', "policy: weights.cost: expected an integer >= 0, got -1"),
        ('{"pools": []}', "policy: 'pools' does not belong in a policy file"),
        ("{not json", "is not JSON"),
        ('{"latency_ms": {"YRD": {"CY": -3}}}', "latency_ms.YRD.CY"),
    ],
    ids=["negative-weight", "pools", "not-json", "negative-latency"],
)
def test_bad_policy_file_is_refused_at_start(tmp_path: Path, policy: str, message: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(policy)
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "broker", "serve", "--listen", "127.0.0.1:0",
         "--db", str(tmp_path / "b.db"), "--policy", str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("icx: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "b.db").exists()  # refused before touching the store
