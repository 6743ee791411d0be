"""The files in examples/ load as what they claim to be."""

from __future__ import annotations

from pathlib import Path

from broker.policy import load_policy
from cli._jobspec import load_spec
from node_agent.config import load_center, usage_key_path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_job_example_is_a_valid_spec() -> None:
    spec = load_spec(EXAMPLES / "job.toml")
    assert (spec.accelerator, spec.devices, spec.estimated_s) == ("ascend-910", 8, 9000)
    assert spec.allowed_regions == ("CY", "GS", "NX")
    assert spec.max_price_minor == 20_000
    assert spec.data_mb == 40_000
    assert dict(spec.env) == {"EPOCHS": "3"}


def test_center_example_is_a_valid_center() -> None:
    center = load_center(EXAMPLES / "center.toml")
    assert (center.center_id, center.region, center.pue_milli) == ("CN06", "CY", 1250)
    assert [p.devices_total for p in center.pools] == [64]
    assert usage_key_path(EXAMPLES / "center.toml") == EXAMPLES / "CN06.key"


def test_policy_example_is_a_valid_policy() -> None:
    template = load_policy(EXAMPLES / "policy.json")
    policy = template.policy
    assert (policy.w_cost, policy.w_carbon, policy.carbon_price_minor_per_tonne) == (1, 10, 10_000)
    assert dict(policy.quota_devices) == {"JJJ": 512}
    assert policy.incentive_minor_per_device_hour == 50
    assert template.latency_ms["YRD"]["CY"] == 24.9
