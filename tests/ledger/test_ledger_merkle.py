"""ledger.merkle against the transparency-dev/merkle vectors, the RFC 6962 canonical
roots, and property tests on random trees."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle
from ledger.merkle import ProofError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "merkle"


def _load(kind: str) -> list[Any]:
    params = []
    for path in sorted((VECTORS / kind).glob("*/*.json")):
        probe = json.loads(path.read_text())
        desc = f"{kind}/{path.parent.name}/{probe['desc']}"
        params.append(pytest.param(probe, id=desc))
    return params


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _proof(probe: dict[str, Any]) -> list[bytes]:
    return [_b64(h) for h in probe["proof"] or []]


INCLUSION = _load("inclusion")
CONSISTENCY = _load("consistency")


def test_vectors_are_all_there() -> None:
    assert len(INCLUSION) == 53
    assert len(CONSISTENCY) == 43


@pytest.mark.parametrize("probe", INCLUSION)
def test_inclusion_vector(probe: dict[str, Any]) -> None:
    args = (
        _b64(probe["leafHash"]),
        probe["leafIdx"],
        probe["treeSize"],
        _proof(probe),
        _b64(probe["root"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("probe", CONSISTENCY)
def test_consistency_vector(probe: dict[str, Any]) -> None:
    args = (
        probe["size1"],
        probe["size2"],
        _proof(probe),
        _b64(probe["root1"]),
        _b64(probe["root2"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


# RFC 6962 test leaves (transparency-dev/merkle testonly).
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
LEAF_HASHES = [merkle.hash_leaf(leaf) for leaf in LEAVES]


def test_canonical_roots() -> None:
    assert merkle.root([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert merkle.root(LEAF_HASHES[:7]).hex() == (
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"
    )
    assert merkle.root(LEAF_HASHES).hex() == (
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )


def test_generated_proofs_match_the_vectors() -> None:
    happy = json.loads((VECTORS / "inclusion" / "1" / "happy-path.json").read_text())
    assert happy["treeSize"] == 8
    got = merkle.inclusion_proof(happy["leafIdx"], LEAF_HASHES)
    assert got == _proof(happy)
    assert LEAF_HASHES[happy["leafIdx"]] == _b64(happy["leafHash"])

    cons = json.loads((VECTORS / "consistency" / "2" / "happy-path.json").read_text())
    leaves = LEAF_HASHES[: cons["size2"]]
    assert merkle.consistency_proof(cons["size1"], leaves) == _proof(cons)
    assert merkle.root(leaves[: cons["size1"]]) == _b64(cons["root1"])
    assert merkle.root(leaves) == _b64(cons["root2"])


def test_verifier_messages_name_the_fault() -> None:
    proof = merkle.inclusion_proof(2, LEAF_HASHES)
    root = merkle.root(LEAF_HASHES)
    with pytest.raises(ProofError, match=r"index is beyond size: 8 >= 8"):
        merkle.verify_inclusion(LEAF_HASHES[2], 8, 8, proof, root)
    with pytest.raises(ProofError, match=r"wrong proof size 2, want 3"):
        merkle.verify_inclusion(LEAF_HASHES[2], 2, 8, proof[:2], root)
    with pytest.raises(ProofError, match=r"root must be 32 bytes, got 31 bytes"):
        merkle.verify_inclusion(LEAF_HASHES[2], 2, 8, proof, root[:31])
    with pytest.raises(ProofError, match=r"proof\[1\] must be 32 bytes"):
        merkle.verify_inclusion(LEAF_HASHES[2], 2, 8, [proof[0], b"x", proof[2]], root)
    with pytest.raises(ProofError, match=r"index must be an integer"):
        merkle.verify_inclusion(LEAF_HASHES[2], -1, 8, proof, root)
    with pytest.raises(ProofError, match=r"root mismatch"):
        merkle.verify_inclusion(LEAF_HASHES[3], 2, 8, proof, root)
    with pytest.raises(ProofError, match=r"size2 \(3\) < size1 \(4\)"):
        merkle.verify_consistency(4, 3, [], root, root)
    with pytest.raises(ProofError, match=r"expected empty proof from size 0"):
        merkle.verify_consistency(0, 8, proof, merkle.EMPTY_ROOT, root)


def test_empty_tree_is_a_prefix_of_every_tree() -> None:
    root = merkle.root(LEAF_HASHES)
    merkle.verify_consistency(0, 8, [], merkle.EMPTY_ROOT, root)
    merkle.verify_consistency(0, 0, [], merkle.EMPTY_ROOT, merkle.EMPTY_ROOT)
    assert merkle.consistency_proof(0, LEAF_HASHES) == []


def test_generation_refuses_out_of_range() -> None:
    with pytest.raises(ProofError, match=r"index is beyond size: 3 >= 3"):
        merkle.inclusion_proof(3, LEAF_HASHES[:3])
    with pytest.raises(ProofError, match=r"size1 must be 0..size2 \(3\), got 4"):
        merkle.consistency_proof(4, LEAF_HASHES[:3])


def test_frontier_matches_root_and_restores() -> None:
    frontier = merkle.Frontier()
    nodes: dict[tuple[int, int], bytes] = {}
    for i, h in enumerate(LEAF_HASHES * 3):
        for level, index, node in frontier.append(h):
            nodes[(level, index)] = node
        assert frontier.root() == merkle.root((LEAF_HASHES * 3)[: i + 1])
    restored = merkle.Frontier.restore(frontier.size, lambda lv, ix: nodes[(lv, ix)])
    assert restored.root() == frontier.root()
    # Stored perfect nodes answer proofs without the leaves.
    for b, e in merkle.inclusion_plan(5, 24):
        assert merkle.hash_range(b, e, lambda lv, ix: nodes[(lv, ix)]) == merkle.root(
            (LEAF_HASHES * 3)[b:e]
        )


def _flip(proof: list[bytes], which: int, bit: int) -> list[bytes]:
    out = list(proof)
    h = bytearray(out[which])
    h[bit // 8] ^= 1 << (bit % 8)
    out[which] = bytes(h)
    return out


trees = st.integers(min_value=1, max_value=80).flatmap(
    lambda n: st.tuples(
        st.lists(st.binary(max_size=8), min_size=n, max_size=n, unique=True),
        st.integers(min_value=0, max_value=n - 1),
        st.integers(min_value=0, max_value=255),
    )
)


@settings(max_examples=150, deadline=None)
@given(trees)
def test_inclusion_property(case: tuple[list[bytes], int, int]) -> None:
    """Every generated inclusion proof verifies; a flipped bit anywhere or another index
    fails. (A wrong size can chain to the same root when the proof shape is unchanged;
    the vectors' size mutations cover the shapes that differ.)"""
    leaves, index, bit = case
    hashes = [merkle.hash_leaf(leaf) for leaf in leaves]
    size = len(hashes)
    root = merkle.root(hashes)
    proof = merkle.inclusion_proof(index, hashes)
    merkle.verify_inclusion(hashes[index], index, size, proof, root)
    if proof:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(
                hashes[index], index, size, _flip(proof, bit % len(proof), bit), root
            )
    with pytest.raises(ProofError):
        merkle.verify_inclusion(hashes[index], index, size, proof, _flip([root], 0, bit)[0])
    with pytest.raises(ProofError):
        merkle.verify_inclusion(_flip([hashes[index]], 0, bit)[0], index, size, proof, root)
    if size > 1:
        other = (index + 1 + bit % (size - 1)) % size
        with pytest.raises(ProofError):
            merkle.verify_inclusion(hashes[index], other, size, proof, root)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(min_value=1, max_value=80).flatmap(
        lambda n: st.tuples(
            st.integers(min_value=1, max_value=n),
            st.lists(st.binary(max_size=8), min_size=n, max_size=n, unique=True),
            st.integers(min_value=0, max_value=255),
        )
    )
)
def test_consistency_property(case: tuple[int, list[bytes], int]) -> None:
    """Every generated consistency proof verifies; a flipped bit or a dropped hash fails."""
    size1, leaves, bit = case
    hashes = [merkle.hash_leaf(leaf) for leaf in leaves]
    size2 = len(hashes)
    root1, root2 = merkle.root(hashes[:size1]), merkle.root(hashes)
    proof = merkle.consistency_proof(size1, hashes)
    merkle.verify_consistency(size1, size2, proof, root1, root2)
    for which in range(len(proof)):
        with pytest.raises(ProofError):
            merkle.verify_consistency(size1, size2, _flip(proof, which, bit), root1, root2)
    if size1 < size2:
        with pytest.raises(ProofError):
            merkle.verify_consistency(size1, size2, proof, _flip([root1], 0, bit)[0], root2)
        with pytest.raises(ProofError):
            merkle.verify_consistency(size1, size2, proof, root1, _flip([root2], 0, bit)[0])
        with pytest.raises(ProofError):
            merkle.verify_consistency(size1, size2, proof[:-1], root1, root2)
