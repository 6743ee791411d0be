"""Bindings, envelopes and the view: what is accepted, and each refusal with its reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from core.clock import SYSTEM
from core.errors import InvalidConfig
from identity import Authority, Credentials, Role, init_member
from identity.certs import load_key
from identity.tls import Trust
from peering import (
    Binding,
    DropReason,
    Envelope,
    PeeringConfig,
    Refused,
    Summaries,
    Verifier,
    sign_binding,
    sign_envelope,
    verify_binding,
)

from .conftest import Brokers

PEER = "12D3KooWLpHaJUiTTrowiTY3PafpskVGnUreNh6SCMM9Mi9mzj63"
OTHER_PEER = "12D3KooWRRW6k5xy3sXRaNWFbtTM2grmNY9uq2AsdF3PkJ7oPh2t"
TOPIC = "icx/summaries/1"
LATER = SYSTEM.now_ms() + 3_600_000


def envelope(
    creds: Credentials,
    *,
    version: int = 1,
    issued_at_ms: int = 1000,
    origin: str = "",
    payload: bytes = b"capacity",
    heads: tuple[tuple[str, int], ...] = (),
    peer: str = PEER,
) -> Envelope:
    return sign_envelope(
        load_key(creds.key_pem),
        topic=TOPIC,
        origin=origin or creds.member.name,
        version=version,
        issued_at_ms=issued_at_ms,
        payload=payload,
        heads=heads,
        binding=sign_binding(creds, peer, LATER),
    )


def test_a_binding_names_the_broker_behind_a_peer_id(broker: Brokers) -> None:
    east = broker("east")
    binding = Binding.decode(sign_binding(east, PEER, LATER).encode())
    member, public = verify_binding(binding, Trust(east.root), SYSTEM.now_ms())
    assert (member.name, member.region, member.role) == ("east", "east", Role.BROKER)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert binding.peer_id == PEER


def test_bindings_that_do_not_check_out_are_refused_with_their_reason(
    broker: Brokers, tmp_path: Path
) -> None:
    east = broker("east")
    trust = Trust(east.root)
    now = SYSTEM.now_ms()
    good = sign_binding(east, PEER, LATER)

    with pytest.raises(Refused, match="is not signed by broker east") as bad:
        verify_binding(dataclasses.replace(good, peer_id=OTHER_PEER), trust, now)
    assert bad.value.reason is DropReason.BAD_SIGNATURE

    with pytest.raises(Refused, match="expired at") as old:
        verify_binding(sign_binding(east, PEER, now - 1), trust, now)
    assert old.value.reason is DropReason.NON_MEMBER

    with pytest.raises(Refused, match="names broker west") as renamed:
        verify_binding(dataclasses.replace(good, broker="west"), trust, now)
    assert renamed.value.reason is DropReason.ORIGIN_MISMATCH

    # A broker of another federation (its own root).
    other = Authority.create(tmp_path / "other", "other")
    init_member(tmp_path / "intruder", "intruder")
    other.admit_into(tmp_path / "intruder", role=Role.BROKER, region="east")
    intruder = Credentials.load(tmp_path / "intruder")
    with pytest.raises(Refused, match="not signed by this federation's root") as foreign:
        verify_binding(sign_binding(intruder, PEER, LATER), trust, now)
    assert foreign.value.reason is DropReason.NON_MEMBER

    with pytest.raises(Refused, match="binding must have the members") as malformed:
        Binding.decode(b'{"peer_id":"x"}')
    assert malformed.value.reason is DropReason.MALFORMED


def test_a_revoked_broker_is_refused(broker: Brokers, federation: object) -> None:
    east = broker("east")
    authority = federation.authority  # type: ignore[attr-defined]
    revocations = authority.revoke([east.member.serial])
    with pytest.raises(Refused, match="is revoked") as revoked:
        verify_binding(
            sign_binding(east, PEER, LATER), Trust(east.root, revocations), SYSTEM.now_ms()
        )
    assert revoked.value.reason is DropReason.NON_MEMBER


def test_only_a_broker_binds_a_peer_id(federation: object) -> None:
    folder = federation.member("dc1", Role.CENTER, region="east", usage_key="k")  # type: ignore[attr-defined]
    center = Credentials.load(folder)
    with pytest.raises(Refused, match="only a broker peers, not center dc1"):
        sign_binding(center, PEER, LATER)


def test_an_envelope_verifies_and_each_change_is_caught(broker: Brokers) -> None:
    east, west = broker("east"), broker("west")
    verifier = Verifier(Trust(east.root), SYSTEM.now_ms)
    good = envelope(east, heads=(("west", 7),))
    checked = verifier.envelope(good.encode(), topic=TOPIC, sender=PEER)
    assert checked == good
    assert checked.heads == (("west", 7),)

    cases = [
        (
            dataclasses.replace(good, payload=b"forged"),
            PEER,
            DropReason.BAD_SIGNATURE,
            "not signed",
        ),
        (dataclasses.replace(good, version=2), PEER, DropReason.BAD_SIGNATURE, "not signed"),
        (envelope(west, origin="east"), PEER, DropReason.ORIGIN_MISMATCH, "west .* signs for"),
        (good, OTHER_PEER, DropReason.ORIGIN_MISMATCH, "whose peer is"),
        (dataclasses.replace(good, topic="other"), PEER, DropReason.MALFORMED, "sent on"),
    ]
    for bad, sender, reason, match in cases:
        with pytest.raises(Refused, match=match) as caught:
            verifier.envelope(bad.encode(), topic=TOPIC, sender=sender)
        assert caught.value.reason is reason
    with pytest.raises(Refused, match="not canonical JSON") as junk:
        verifier.envelope(b"\x00junk", topic=TOPIC, sender=PEER)
    assert junk.value.reason is DropReason.MALFORMED


def test_the_view_keeps_the_latest_per_origin_and_notes_what_it_lacks(
    broker: Brokers,
) -> None:
    east = broker("east")
    summaries = Summaries(TOPIC)
    v2 = envelope(east, version=2, payload=b"two")
    assert summaries.offer(v2, v2.encode()) is not None
    for stale in (envelope(east, version=1), v2):  # older, and the same again
        assert summaries.offer(stale, stale.encode()) is None
    assert summaries.get("east").payload == b"two"  # type: ignore[union-attr]
    republished = envelope(east, version=2, issued_at_ms=2000, payload=b"two")
    assert summaries.offer(republished, republished.encode()) is not None

    summaries.note_heads((("east", 3), ("west", 5), ("self", 9)), holder=PEER, own="self")
    summaries.note_heads((("west", 5),), holder=OTHER_PEER, own="self")
    assert summaries.wanted() == {
        "east": (3, frozenset({PEER})),
        "west": (5, frozenset({PEER, OTHER_PEER})),
    }
    v3 = envelope(east, version=3)
    summaries.offer(v3, v3.encode())
    assert set(summaries.wanted()) == {"west"}
    assert summaries.silent(now_ms=1000 + 5000, bound_ms=4000, own="self") == ["east"]
    assert summaries.silent(now_ms=1000 + 5000, bound_ms=4000, own="east") == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("listen_port", 70000, "listen_port must be 0..65535, got 70000"),
        ("bootstrap", ("/ip4/127.0.0.1/tcp/1",), "must end in /p2p/<peer id>"),
        ("heartbeat_s", 0, "heartbeat_s must be >= 1, got 0"),
        ("mesh_degree_low", 5, "mesh degrees must satisfy"),
        ("peer_key_seed", b"short", "peer_key_seed must be 32 bytes, got 5"),
        ("republish_s", 0, "republish_s must be > 0, got 0"),
        ("test_drop_fraction", 1.0, r"test_drop_fraction must be in \[0, 1\), got 1.0"),
    ],
)
def test_a_bad_config_says_what_is_wrong(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        PeeringConfig(**{field: value})  # type: ignore[arg-type]


def test_a_bad_peer_key_file_is_refused(tmp_path: Path) -> None:
    from peering import peer_key_seed

    seed = peer_key_seed(tmp_path / "peer.key")
    assert len(seed) == 32 and peer_key_seed(tmp_path / "peer.key") == seed
    (tmp_path / "bad.key").write_bytes(b"123")
    with pytest.raises(InvalidConfig, match="must hold a 32-byte peer key seed, holds 3 bytes"):
        peer_key_seed(tmp_path / "bad.key")
