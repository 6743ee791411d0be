"""The problem file: the documented example solves, a dump reads back equal, and each
malformed field is refused naming the field; `icx match` exits 2 with one line."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from cli.main import main
from matcher import (
    CpSatMatcher,
    InvalidProblem,
    Problem,
    dump_problem,
    load_problem,
    load_problem_file,
    solution_to_json,
)
from tests.matcher.test_properties import problems

DOC = Path(__file__).resolve().parents[2] / "docs" / "matcher-problem.md"


def example() -> dict[str, Any]:
    block = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)[0]
    doc: dict[str, Any] = json.loads(block)
    return doc


def test_the_documented_example_solves_as_documented() -> None:
    problem = load_problem(example())
    solution = CpSatMatcher(time_limit_s=2.0, num_workers=1).solve(problem)
    placed = {a.job_id: a.pool_id for a in solution.assignments}
    assert placed == {"j-train": "CN06/ascend-910", "j-east": "CN17/nvidia-h800"}
    assert [(u.job_id, u.reason) for u in solution.unplaced] == [
        ("j-big", "no pool with 128 free devices of ascend-910 in any region (most free: 64)")
    ]
    assert solution.optimal and solution.gap == 0.0
    out = solution_to_json(solution)
    assert out["assignments"][0]["runner_up"] == "CN17/nvidia-h800"
    assert out["assignments"][0]["transfer_ms"] == 25 + 40_000  # RTT SH-TF + 500 GB at 100 Gbit/s


def test_units_are_converted_at_the_edge() -> None:
    doc = example()
    doc["jobs"][0].update(hours=0.1, deadline_hours=0.5, waited_hours=1.99, data_gb=0.0015)
    job = load_problem(doc).jobs[0]
    assert (job.seconds, job.deadline_s, job.waited_s, job.data_mb) == (360, 1800, 7164, 2)
    pool = load_problem(doc).pools[0]
    assert (pool.pue_milli, pool.grid_g_per_kwh) == (1250, 140)
    assert load_problem(doc).policy.carbon_price_minor_per_tonne == 10_000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_dump_reads_back_equal(problem: Problem) -> None:
    again = load_problem(json.loads(json.dumps(dump_problem(problem))))
    assert again.pools == problem.pools
    assert again.jobs == problem.jobs
    assert again.policy == problem.policy
    assert again.default_bandwidth_mbps == problem.default_bandwidth_mbps


def _mutate(path: str, value: object) -> dict[str, Any]:
    doc = copy.deepcopy(example())
    target: Any = doc
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    for key in keys[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return doc


_DELETE = object()

BAD = [
    ("pools[1].free", -1, "pools[1].free: expected an integer >= 0, got -1"),
    ("jobs[0].devices", 0, "jobs[0].devices: expected an integer >= 1, got 0"),
    ("jobs[0].devices", 2.5, "jobs[0].devices: expected an integer >= 1, got 2.5"),
    ("jobs[1].hours", 0, "jobs[1].hours: expected a number > 0, got 0"),
    ("jobs[1].hours", "2", 'jobs[1].hours: expected a number > 0, got "2"'),
    (
        "jobs[0].regions",
        "YRD",
        'jobs[0].regions: expected a list of region names or null, got "YRD"',
    ),
    ("jobs[2].id", "j-train", "jobs[2].id: duplicate id 'j-train'"),
    ("jobs[0].devcies", 4, "jobs[0]: unknown field 'devcies' (expected one of"),
    ("pools[0].pue", 0.9, "pools[0].pue: expected a number >= 1, got 0.9"),
    (
        "pools[0].price_minor_per_device_hour",
        _DELETE,
        "pools[0].price_minor_per_device_hour: missing",
    ),
    ("weights.carbon", -1, "weights.carbon: expected an integer >= 0, got -1"),
    ("latency_ms.XX", {"TF": 3}, "latency_ms.XX: unknown region 'XX' (known: SH, TF, YRD)"),
    ("latency_ms.YRD.ZZ", 3, "latency_ms.YRD.ZZ: unknown region 'ZZ' (known: SH, TF, YRD)"),
    ("latency_ms.YRD.TF", -2, "latency_ms.YRD.TF: expected a number >= 0, got -2"),
    ("quotas", [], "quotas: expected an object (region -> devices), got []"),
    ("pools", {}, "pools: expected a list, got {}"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_field_is_named(path: str, value: object, message: str) -> None:
    with pytest.raises(InvalidProblem, match=re.escape(message)):
        load_problem(_mutate(path, value))


def test_unreadable_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidProblem, match="cannot read problem file"):
        load_problem_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(InvalidProblem, match=r"is not JSON: .* at line 1 column 2"):
        load_problem_file(bad)


def test_unplaceable_is_not_invalid() -> None:
    problem = load_problem(_mutate("jobs[1].devices", 4096))
    assert problem.jobs[1].devices == 4096


def test_a_gang_beyond_the_bound_is_invalid() -> None:
    with pytest.raises(
        InvalidProblem, match=r"^job 'j-train': devices must be 1\.\.4096, got 4097$"
    ):
        load_problem(_mutate("jobs[0].devices", 4097))


def test_icx_match_prints_the_solution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(example()))
    assert main(["match", "--problem", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["solver"] in ("mip", "cpsat") and out["gap"] == 0.0
    assert [u["job"] for u in out["unplaced"]] == ["j-big"]
    assert main(["match", "--problem", str(path), "--solver", "greedy"]) == 0
    text = capsys.readouterr().out
    assert "j-train  CN06/ascend-910" in text and "solver greedy" in text


@pytest.mark.parametrize(("path", "value", "message"), BAD[:4], ids=[b[0] for b in BAD[:4]])
def test_icx_match_bad_problem_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], path: str, value: object, message: str
) -> None:
    file = tmp_path / "p.json"
    file.write_text(json.dumps(_mutate(path, value)))
    assert main(["match", "--problem", str(file)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"icx: error: {message}\n"


def test_a_matcher_with_unusable_settings_is_refused_by_name() -> None:
    from core.errors import InvalidArgument
    from matcher import CpSatMatcher
    from matcher.errors import InvalidSettings

    with pytest.raises(InvalidSettings, match=r"^time_limit_s must be > 0, got 0$"):
        CpSatMatcher(time_limit_s=0)
    with pytest.raises(InvalidArgument, match=r"^num_workers must be >= 1, got 0$"):
        CpSatMatcher(num_workers=0)
