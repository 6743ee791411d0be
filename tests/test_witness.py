"""An independent witness cosigns the broker's checkpoints only when each extends the
last one it cosigned; bundles then verify under a policy that demands its cosignature."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.federation import LocalFederation
from identity import Role
from tests.conftest import (
    FAST_BROKER,
    make_center,
    record_spec,
    run_icx,
    submit,
    wait_centers,
    wait_for,
)


def reader(fed: LocalFederation) -> Path:
    """Anyone may read the ledger: here a user of tenant "default"."""
    return fed.member("default.user", Role.USER, tenant="default")


def witness(fed: LocalFederation, name: str = "auditor") -> Path:
    """Cosignatures come from brokers (and the coordinator): the witness is another
    region's broker, admitted as such."""
    return fed.member(name, Role.BROKER, region="WITNESS")


@pytest.fixture
def witnessed(tmp_path: Path) -> Iterator[tuple[LocalFederation, str, Path]]:
    key = tmp_path / "auditor.key"
    made = run_icx("ledger", "witness", "init", "--name", "auditor.example", "--key", str(key))
    assert made.returncode == 0, made.stderr
    vkey = made.stdout.strip()
    with LocalFederation(
        root=tmp_path / "fed", broker_args=(*FAST_BROKER, "--witness", vkey)
    ) as fed:
        yield fed, vkey, key


def _size(fed: LocalFederation) -> int:
    with fed.client() as client:
        return int(client.checkpoint().splitlines()[1])


def test_witness_cosigns_growth_and_bundles_carry_its_cosignature(
    witnessed: tuple[LocalFederation, str, Path], tmp_path: Path
) -> None:
    fed, vkey, key = witnessed
    state = tmp_path / "auditor.json"
    cosign = ("ledger", "witness", "cosign", "--broker", fed.address, "--key", str(key),
              "--state", str(state), "--json")  # fmt: skip
    first = run_icx(*cosign, identity=witness(fed))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["kept"] == 1

    fed.start_agent(make_center("CA"))
    with fed.client() as client:
        wait_centers(client, 1)
        out = tmp_path / "runs"
        out.mkdir()
        for _ in range(2):
            submit(client, record_spec(out, 1.0))
    wait_for(lambda: _size(fed) >= 4, 30, "two usage records")  # key, CA, 2 usage
    second = run_icx(
        *cosign, identity=witness(fed)
    )  # checks a consistency proof from the first size
    assert second.returncode == 0, second.stderr
    grown = json.loads(second.stdout)
    assert grown["size"] >= 4 and grown["kept"] == 1

    bundle = tmp_path / "bundle.json"
    assert (
        run_icx(
            "ledger",
            "prove",
            "--index",
            "3",
            "--broker",
            fed.address,
            "-o",
            str(bundle),
            identity=reader(fed),
        ).returncode
        == 0
    )
    log_key = run_icx("ledger", "key", "--broker", fed.address, identity=reader(fed)).stdout.strip()
    strict = tmp_path / "strict.json"
    trust = run_icx(
        "ledger", "trust", "--broker", fed.address, "--witness", vkey, "-o", str(strict),
        identity=reader(fed),
    )  # fmt: skip
    assert trust.returncode == 0, trust.stderr
    assert json.loads(strict.read_text()) == {"log": log_key, "witnesses": [vkey], "quorum": 1}
    verified = run_icx("ledger", "verify", str(bundle), "--policy", str(strict))
    assert verified.returncode == 0, verified.stderr
    # A quorum beyond the witnesses named is refused, and nothing is written.
    lax = run_icx(
        "ledger", "trust", "--broker", fed.address, "--witness", vkey, "--quorum", "2",
        identity=reader(fed),
    )  # fmt: skip
    assert (lax.returncode, lax.stdout) == (2, "")
    assert lax.stderr == "icx: error: policy: quorum must be 0..1 witnesses, got 2\n"

    # A witness the broker was not told to accept: its cosignature is not kept.
    other = tmp_path / "other.key"
    assert (
        run_icx("ledger", "witness", "init", "--name", "stranger", "--key", str(other)).returncode
        == 0
    )
    ignored = run_icx("ledger", "witness", "cosign", "--broker", fed.address, "--key", str(other),
                  "--state", str(tmp_path / "other.json"), "--json",
                  identity=witness(fed, "stranger"))  # fmt: skip
    assert ignored.returncode == 0, ignored.stderr
    assert json.loads(ignored.stdout)["kept"] == 0
    note = run_icx("ledger", "checkpoint", "--broker", fed.address, identity=reader(fed)).stdout
    assert "stranger" not in note and note.count("\u2014 auditor.example ") == 1


def test_witness_refuses_a_checkpoint_that_does_not_match_its_history(
    witnessed: tuple[LocalFederation, str, Path], tmp_path: Path
) -> None:
    fed, _, key = witnessed
    state = tmp_path / "auditor.json"
    args = ("ledger", "witness", "cosign", "--broker", fed.address, "--key", str(key),
            "--state", str(state))  # fmt: skip
    assert run_icx(*args, identity=witness(fed)).returncode == 0
    fed.start_agent(make_center("CA"))  # the log grows by the center's key
    wait_for(lambda: _size(fed) >= 2, 20, "the log to grow")
    # The witness remembers a different root at the old size: a forked history.
    remembered = json.loads(state.read_text())
    lines = remembered["note"].split("\n")
    lines[2] = "A" * 43 + "="
    remembered["note"] = "\n".join(lines)
    state.write_text(json.dumps(remembered))
    forked = run_icx(*args, identity=witness(fed))
    assert forked.returncode != 0
    assert forked.stderr.startswith("icx: error: ")
    assert json.loads(state.read_text()) == remembered  # nothing cosigned, nothing kept
