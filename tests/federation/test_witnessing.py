"""Brokers witness each other's logs: a peer's checkpoint is cosigned after a consistency
proof, and a broker that signs two different trees of one size is caught by a witness,
with both notes stored as evidence, and is no longer trusted."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.ledger import ledger_paths
from broker.witnessing import announcement
from cli.federation import LocalFederation
from core.types import JobSpec
from identity import Credentials, Role
from ledger import Checkpoint, LedgerStore, SignerKey, sign_checkpoint
from ledger.note import parse_note
from peering import CHECKPOINTS_TOPIC, SUMMARIES_TOPIC, PeerHost, PeeringConfig
from tests.conftest import make_center, run_icx, wait_centers, wait_for
from tests.federation.regions import metric, regions


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalFederation]]:
    root = tmp_path_factory.mktemp("witnessed")
    with regions(root, ("east", "west")) as feds:
        feds["west"].start_agent(make_center("west-1", region="west"))
        with feds["west"].client() as c:
            wait_centers(c, 1)
        yield feds


def _witness_state(fed: LocalFederation) -> dict[str, object]:
    path = fed.db.with_suffix(".witness.json")
    return json.loads(path.read_text()) if path.exists() else {}


def _cosigned_size(witness: LocalFederation, origin: str) -> int:
    note = _witness_state(witness).get("latest", {}).get(origin)  # type: ignore[union-attr]
    return Checkpoint.from_text(parse_note(note).text).size if note else 0


def test_each_broker_cosigns_the_others_checkpoints(
    pair: dict[str, LocalFederation], tmp_path: Path
) -> None:
    east, west = pair["east"], pair["west"]
    # West's log grew when its center's key was admitted: east cosigns that checkpoint.
    wait_for(lambda: _cosigned_size(east, "icx/broker-west") >= 2, 20, "east to cosign west")
    reader = west.member("default.user", Role.USER, tenant="default")
    note = wait_for(
        lambda: (n := run_icx("ledger", "checkpoint", "--broker", west.address, identity=reader)
                 .stdout).count("\n— ") >= 2 and n,
        20,
        "west to keep east's cosignature",
    )  # fmt: skip
    east_witness = SignerKey.parse(east.db.with_suffix(".witness-key").read_text()).verifier
    assert east_witness.key_id in {s.key_id for s in parse_note(note).signatures}
    # A policy that demands the peer's cosignature verifies west's log.
    bundle = tmp_path / "entry.json"
    proved = run_icx("ledger", "prove", "--index", "1", "--broker", west.address, "-o",
                     str(bundle), identity=reader)  # fmt: skip
    assert proved.returncode == 0, proved.stderr
    policy = tmp_path / "policy.json"
    trust = run_icx(
        "ledger", "trust", "--broker", west.address, "--witness", east_witness.text(),
        "--quorum", "1", "-o", str(policy), identity=reader,
    )  # fmt: skip
    assert trust.returncode == 0, trust.stderr
    verified = run_icx("ledger", "verify", str(bundle), "--policy", str(policy))
    assert verified.returncode == 0, verified.stderr


async def _publish_forged(
    west: LocalFederation, east_address: str, *steps: tuple[bytes, Callable[[], object]]
) -> None:
    """For each (payload, until): publish the payload on the checkpoints topic as
    broker-west (its membership key), from another libp2p host, as a broker that shows two
    histories would, and keep publishing nothing else until `until()` holds."""
    config = PeeringConfig(
        bootstrap=(east_address,),
        topics=(SUMMARIES_TOPIC, CHECKPOINTS_TOPIC),
        peer_key_seed=os.urandom(32),
    )
    creds = Credentials.load(west.member("broker-west", Role.BROKER, region="west"))
    async with PeerHost(config, creds) as host:
        await host.connect(east_address)
        for payload, until in steps:
            await host.publish(CHECKPOINTS_TOPIC, payload)
            await asyncio.to_thread(wait_for, until, 20, "the forged announcement's effect")


def test_an_older_checkpoint_or_another_brokers_log_raises_no_alarm(
    pair: dict[str, LocalFederation],
) -> None:
    """West's own older checkpoint (as a lagging relay would bring it) is ignored, and an
    announcement by west of a log not named after it is dropped: neither blames anyone."""
    east, west = pair["east"], pair["west"]
    size = wait_for(lambda: _cosigned_size(east, "icx/broker-west"), 20, "a cosigned size")
    log_key = SignerKey.parse(west.db.with_name(west.db.name + ".ledger.key").read_text())
    with LedgerStore(ledger_paths(west.db)[0]) as store:
        older = min((c for c in store.checkpoints() if c[0] < size), key=lambda c: c[0])[1]
    witness = SignerKey.parse(west.db.with_suffix(".witness-key").read_text()).verifier.text()
    stale = announcement("icx/broker-west", log_key.verifier.text(), witness, older)
    squat = announcement("icx/broker-east", log_key.verifier.text(), witness, older)
    east_log = east.root / "logs" / "broker.log"
    asyncio.run(
        _publish_forged(
            west,
            east.peer_address,
            (stale, lambda: metric(east, "icx_checkpoints_ignored_total") >= 1),
            (squat, lambda: "for log icx/broker-east dropped" in east_log.read_text()),
        )
    )
    assert not (east.db.parent / f"{east.db.stem}.evidence").exists()
    assert _witness_state(east).get("distrusted", {}) == {}
    assert _cosigned_size(east, "icx/broker-west") >= size


def test_a_broker_that_signs_two_trees_of_one_size_is_caught(
    pair: dict[str, LocalFederation],
) -> None:
    east, west = pair["east"], pair["west"]
    size = wait_for(lambda: _cosigned_size(east, "icx/broker-west"), 20, "a cosigned size")
    log_key = SignerKey.parse(west.db.with_name(west.db.name + ".ledger.key").read_text())
    forged = sign_checkpoint(
        Checkpoint(origin="icx/broker-west", size=size, root=bytes(32)), log_key
    )
    witness = SignerKey.parse(west.db.with_suffix(".witness-key").read_text()).verifier.text()
    payload = announcement("icx/broker-west", log_key.verifier.text(), witness, forged)
    evidence_dir = east.db.parent / f"{east.db.stem}.evidence"
    asyncio.run(
        _publish_forged(west, east.peer_address, (payload, lambda: list(evidence_dir.glob("*"))))
    )
    [path] = list(evidence_dir.glob("*.json"))
    evidence = json.loads(path.read_text())
    assert evidence["broker"] == "broker-west"
    assert evidence["origin"] == "icx/broker-west"
    roots = {Checkpoint.from_text(parse_note(evidence[k]).text).root for k in ("note_a", "note_b")}
    assert len(roots) == 2 and bytes(32) in roots  # the honest tree and the forged one
    assert "broker-west" in _witness_state(east)["distrusted"]  # type: ignore[operator]
    # East no longer offers west's pools.
    with east.client() as c:
        assert all(q.center_id != "west-1" for q in c.quote(_any_spec()))
    assert metric(east, "icx_equivocations_total", '{origin="icx/broker-west"}') == 1


def _any_spec() -> JobSpec:
    return JobSpec(accelerator="any", devices=1, estimated_s=60, command=(sys.executable, "-V"))
