"""`icx demo` as a script would run it: a small workload, one JSON summary at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_a_workload_over_the_reference_centers(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--jobs", "40", "--span", "3",
         "--dir", str(tmp_path / "demo"), "--json"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["jobs_submitted"] == 40
    assert summary["jobs_unfinished"] == 0
    assert summary["jobs_failed"] == 0
    placed = summary["jobs_succeeded"]
    assert placed + summary["jobs_unplaced"] == 40
    assert placed >= 30
    assert sum(c["jobs"] for c in summary["by_center"]) == placed
    assert sum(h["jobs"] for h in summary["by_hub"]) == placed
    assert len(summary["by_center"]) == 17  # every center, those that ran nothing too
    assert sum(1 for c in summary["by_center"] if c["jobs"]) >= 5  # the work spreads
    assert summary["ledger"]["usage_records"] == placed  # one signed record per run
    # The allocation is the ledger's: each run as its center signed it, in CNY.
    totals = summary["totals"]
    assert (totals["centers"], totals["jobs"], totals["currency"]) == (17, placed, "CNY")
    assert totals["runs"] == summary["ledger"]["usage_records"]
    for key in ("runs", "device_s", "charge_minor", "energy_wh", "carbon_g"):
        assert sum(c[key] for c in summary["by_center"]) == totals[key]
        assert sum(h[key] for h in summary["by_hub"]) == totals[key]
    assert totals["charge_minor"] > 0
    assert summary["figures"].startswith("Figures are the ledger's")
    for u in summary["unplaced"]:
        assert u["reason"]  # every job left in the queue says why
    # Shut down cleanly: nothing left running from this demo.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path / "demo") not in ps


def test_demo_keep_json_prints_what_a_script_needs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--keep", "--jobs", "0", "--json",
         "--dir", str(tmp_path / "kept")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout)
    pids = info["pids"]
    try:
        assert info["db"] == str(tmp_path / "kept" / "broker.db")
        assert len(pids) == 18  # the broker and 17 agents
        assert info["coordinator"] == str(tmp_path / "kept" / "federation" / "coordinator")
        listed = subprocess.run(
            [sys.executable, "-m", "cli.main", "centers", "--json", "--broker", info["broker"],
             "--identity", info["coordinator"]],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert len(json.loads(listed.stdout)) == 17
        # The user it names is a user of its tenant, over TLS.
        who = subprocess.run(
            [sys.executable, "-m", "cli.main", "whoami", "--json", "--broker", info["broker"],
             "--identity", info["user"]["identity"]],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert who.returncode == 0, who.stderr
        me = json.loads(who.stdout)
        assert (me["role"], me["tenant"], me["authenticated"]) == (
            "user",
            info["user"]["tenant"],
            True,
        )
    finally:
        subprocess.run(["kill", *(str(p) for p in pids.values())], check=False)


def test_a_demo_in_a_folder_of_its_own_leaves_nothing_behind(tmp_path: Path) -> None:
    """Without --dir or --keep the demo's folder (databases, logs, the throw-away
    federation's root key) goes with it."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--jobs", "5", "--span", "1", "--json"],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["jobs_submitted"] == 5
    assert list(tmp_path.iterdir()) == []
