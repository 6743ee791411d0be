"""The coordinator's policy file: the policy and network part of a matcher problem file
(docs/matcher-problem.md) without pools or jobs, which each round fills in.

    {"weights": {"cost": 1, "carbon": 2, "latency": 0},
     "carbon_price_yuan_per_tonne": 100,
     "quotas": {"JJJ": 512},
     "incentive": {"yuan_per_device_hour": 0.5, "regions": ["GS", "NX"]},
     "latency_ms": {"YRD": {"CY": 24.9}},
     "default_bandwidth_gbps": 100}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.errors import InvalidConfig
from matcher import InvalidProblem, Problem, dump_problem, load_problem

_NOT_HERE = ("pools", "jobs")


def _regions(doc: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for key in ("latency_ms", "bandwidth_gbps"):
        matrix = doc.get(key, {})
        if isinstance(matrix, dict):
            names |= set(matrix)
            for row in matrix.values():
                if isinstance(row, dict):
                    names |= set(row)
    quotas = doc.get("quotas", {})
    if isinstance(quotas, dict):
        names |= set(quotas)
    incentive = doc.get("incentive", {})
    if isinstance(incentive, dict) and isinstance(incentive.get("regions"), list):
        names |= {r for r in incentive["regions"] if isinstance(r, str)}
    return names


def parse_policy(doc: object) -> Problem:
    """A round template from a parsed policy document; InvalidConfig names the field."""
    if not isinstance(doc, dict):
        raise InvalidConfig("policy must be a JSON object")
    for key in _NOT_HERE:
        if key in doc:
            raise InvalidConfig(f"policy: {key!r} does not belong in a policy file")
    full = {**doc, "pools": [], "jobs": []}
    full.setdefault("regions", sorted(_regions(doc)))
    try:
        return load_problem(full)
    except InvalidProblem as exc:
        raise InvalidConfig(f"policy: {exc}") from exc


def policy_document(template: Problem) -> dict[str, Any]:
    """The policy file of a round template: `parse_policy(policy_document(t))` gives `t`
    back (its regions named by the figures that use them)."""
    doc = dump_problem(template)
    for key in (*_NOT_HERE, "regions"):
        doc.pop(key, None)
    return doc


def load_policy(path: Path) -> Problem:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidConfig(f"cannot read policy {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidConfig(f"policy {path} is not JSON: {exc}") from exc
    return parse_policy(doc)
