"""A job's container in its spec (image, memory_mb, millicpus, network) and a center's
accepted images: checked on construction with the field named, read from the job TOML
and from `icx submit` flags, and carried over the wire unchanged."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import pytest

from cli._jobspec import spec_from_toml
from cli.user_cmd import spec_from_args
from core import wire
from core.errors import InvalidJobSpec, InvalidOffer
from core.types import MAX_JOB_MEMORY_MB, MAX_MILLICPUS, JobSpec, accepts_image
from tests.conftest import make_center

BASE = JobSpec(accelerator="any", devices=1, estimated_s=60, command=("true",))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image": "busybox"}, "image must name a tag or a digest (e.g. busybox:1), got 'busybox'"),
        ({"image": "Icx/box:1"}, "image: the image's repository must be lower-case, got 'Icx/bo"),
        (
            {"image": "icx//box:1"},
            "image must be an image reference such as icx/busybox:1 (lower-case name, then :tag "
            "or @digest), got 'icx//box:1'",
        ),
        ({"image": "a" * 513}, "image must be at most 512 characters, got 513"),
        ({"memory_mb": -1}, f"memory_mb must be 0..{MAX_JOB_MEMORY_MB}, got -1"),
        ({"memory_mb": MAX_JOB_MEMORY_MB + 1}, f"memory_mb must be 0..{MAX_JOB_MEMORY_MB}, got"),
        ({"millicpus": -5}, f"millicpus must be 0..{MAX_MILLICPUS}, got -5"),
        ({"network": "yes"}, "network must be true or false, got 'yes'"),
    ],
    ids=["no-tag", "upper-case", "empty-component", "long", "memory-negative", "memory-big",
         "cpus", "network"],
)  # fmt: skip
def test_a_bad_container_field_is_refused_naming_it(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        dataclasses.replace(BASE, **fields)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "image",
    [
        "icx/busybox:1",
        "busybox:latest",
        "registry.example:5000/team/train:v2.1",
        "localhost/x_y__z-w:1",
        "Registry.Example/team/x:1",  # a host may have capitals; a repository may not
        "icx/box@sha256:" + "0" * 64,
        "icx/box:1@sha256:" + "f" * 64,
    ],
)
def test_good_image_references_are_taken(image: str) -> None:
    assert dataclasses.replace(BASE, image=image).image == image


def test_a_center_accepts_its_images_and_a_plain_center_only_jobs_without_one() -> None:
    assert accepts_image(("icx/a:1", "icx/b:1"), "icx/b:1")
    assert not accepts_image(("icx/a:1",), "icx/b:1")
    assert not accepts_image(("icx/a:1",), "")  # a container center runs only containers
    assert accepts_image((), "")
    assert not accepts_image((), "icx/a:1")
    center = make_center("CD")
    with pytest.raises(InvalidOffer, match="center CD: images must be unique, got 'icx/a:1'"):
        dataclasses.replace(center, images=("icx/a:1", "icx/a:1"))
    with pytest.raises(InvalidOffer, match="center CD: images\\[0\\] must name a tag"):
        dataclasses.replace(center, images=("icx/a",))


def test_the_job_toml_reads_the_container_fields() -> None:
    data = {
        "accelerator": "any", "devices": 1, "hours": 1, "command": ["sh", "-c", "true"],
        "image": "icx/busybox:1", "memory_mb": 512, "cpus": 1.5, "network": True,
    }  # fmt: skip
    spec = spec_from_toml(data)
    assert (spec.image, spec.memory_mb, spec.millicpus, spec.network) == (
        "icx/busybox:1", 512, 1500, True,
    )  # fmt: skip
    bare = spec_from_toml({k: data[k] for k in ("accelerator", "devices", "hours", "command")})
    assert (bare.image, bare.memory_mb, bare.millicpus, bare.network) == ("", 0, 0, False)
    for key, value, message in (
        ("network", "true", "network must be true or false, got 'true'"),
        ("memory_mb", 1.5, "memory_mb has the wrong type: 1.5"),
        ("cpus", -1, "cpus must be 0..1000 CPUs, got -1"),
        ("cpus", 1e9, "cpus must be 0..1000 CPUs, got 1e+09"),
        ("cpus", float("inf"), "cpus must be 0..1000 CPUs, got inf"),
        ("cpus", 0.0001, "cpus must be at least 0.001, got 0.0001"),
        ("image", 7, "image has the wrong type: 7"),
    ):
        with pytest.raises(InvalidJobSpec) as info:
            spec_from_toml({**data, key: value})
        assert str(info.value) == message


def _flags(**given: Any) -> argparse.Namespace:
    defaults: dict[str, Any] = {
        "spec_file": None, "cmd": ["sh", "-c", "true"], "devices": 1, "hours": 1.0,
        "region": None, "max_price": None, "deadline": None, "name": None,
        "accelerator": "any", "priority": 0, "image": None, "memory_mb": None, "cpus": None,
        "network": False,
    }  # fmt: skip
    return argparse.Namespace(**{**defaults, **given})


def test_submit_flags_carry_the_container_and_refuse_mixing_with_a_file() -> None:
    spec = spec_from_args(_flags(image="icx/busybox:1", memory_mb=64, cpus=0.25, network=True))
    assert (spec.image, spec.memory_mb, spec.millicpus, spec.network) == (
        "icx/busybox:1", 64, 250, True,
    )  # fmt: skip
    with pytest.raises(InvalidJobSpec, match=r"^--image, --network cannot be combined"):
        spec_from_args(
            _flags(
                spec_file="job.toml", cmd=[], devices=None, hours=None, image="icx/a:1",
                network=True,
            )
        )  # fmt: skip


def test_the_wire_carries_the_container_and_the_images_unchanged() -> None:
    spec = dataclasses.replace(
        BASE, image="icx/busybox:1", memory_mb=2048, millicpus=3500, network=True
    )
    assert wire.spec_from_proto(wire.spec_to_proto(spec)) == spec
    assert wire.spec_from_proto(wire.spec_to_proto(BASE)) == BASE
    center = dataclasses.replace(make_center("CD"), images=("icx/a:1", "icx/b:2"))
    assert wire.center_from_proto(wire.center_to_proto(center)) == center
    msg = wire.spec_to_proto(spec)
    msg.image = "nope"  # what a client sends is checked on the way in
    with pytest.raises(InvalidJobSpec, match="image must name a tag or a digest"):
        wire.spec_from_proto(msg)
