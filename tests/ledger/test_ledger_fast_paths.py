"""The fast paths give exactly what the full ones give: bytes, roots, errors."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import Log, canonical, merkle
from ledger.errors import InvalidRecord, SignatureError
from ledger.signing import (
    SignedRecord,
    _batch_levels,
    _batch_proof,
    cache_batch_roots,
    sign_records,
)
from ledger.store import LedgerStore
from tests.ledger.conftest import Parties, usage

_json = st.recursive(
    st.integers(-(2**60), 2**60)
    | st.text()
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


def _full(data: bytes) -> object:
    try:
        return ("ok", canonical._decode_full(data))
    except InvalidRecord as exc:
        return ("refused", str(exc))


def _fast(data: bytes) -> object:
    try:
        return ("ok", canonical.decode(data))
    except InvalidRecord as exc:
        return ("refused", str(exc))


@settings(max_examples=300)
@given(_json, st.sampled_from(["canonical", "sorted", "spaced", "ascii", "plain"]))
def test_fast_decode_agrees_with_the_full_check(value: object, form: str) -> None:
    if form == "canonical":
        try:
            data = canonical.encode(value)
        except InvalidRecord:
            return
    else:
        kwargs: dict[str, object] = {
            "sorted": {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False},
            "spaced": {"sort_keys": True},
            "ascii": {"sort_keys": True, "separators": (",", ":")},
            "plain": {"separators": (",", ":"), "ensure_ascii": False},
        }[form]
        try:
            data = json.dumps(value, **kwargs).encode("utf-8")  # type: ignore[arg-type]
        except UnicodeEncodeError:
            return
    assert _fast(data) == _full(data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"a":1}',
        b'{"a":true}',
        b'{"a":null}',
        b'{"a":9007199254740992}',
        b'{"a":-0}',
        b'{"a":"\\ud800"}',
        b'{"a":"\\u0041"}',
        b'{"b":1,"a":2}',
        b'{"a":1.5}',
        b'{"a":1e3}',
        b"[1, 2]",
        b'{"nullable":"true"}',
        b'{"a":[1,{"b":"x"}]}',
    ],
)
def test_fast_decode_agrees_on_tricky_inputs(data: bytes) -> None:
    assert _fast(data) == _full(data)


def test_entry_bytes_are_the_canonical_encoding(parties: Parties) -> None:
    records = [usage(f"center/wuhan/f{i}") for i in range(5)]
    for sr in sign_records(records, parties.wuhan):
        assert sr.entry() == canonical.encode(sr.to_json())
        assert sr.record.canonical() == canonical.encode(sr.record.to_json())
        assert SignedRecord.from_entry(sr.entry()) == sr


def test_entry_with_an_unusual_key_id_still_encodes_canonically(parties: Parties) -> None:
    sr = sign_records([usage("center/wuhan/k")], parties.wuhan)[0]
    odd = SignedRecord(
        record=sr.record,
        producer_key='name "quoted" \u00e9\u2028\n',
        producer_sig=sr.producer_sig,
    )
    assert odd.entry() == canonical.encode(odd.to_json())
    bad = SignedRecord(record=sr.record, producer_key="\ud800", producer_sig=sr.producer_sig)
    with pytest.raises(InvalidRecord, match="lone surrogate"):
        bad.entry()


def test_batch_tree_gives_the_rfc_root_and_proofs() -> None:
    for size in range(1, 70):
        leaves = [merkle.hash_leaf(b"%d" % i) for i in range(size)]
        levels = _batch_levels(leaves)
        assert levels[-1][0] == merkle.root(leaves)
        for i in range(size):
            assert list(_batch_proof(levels, i)) == merkle.inclusion_proof(i, leaves)


def test_bulk_batch_roots_match_one_by_one(parties: Parties) -> None:
    signed = sign_records([usage(f"center/wuhan/b{i}") for i in range(7)], parties.wuhan)
    fresh = [SignedRecord.from_entry(sr.entry()) for sr in signed]
    # A tampered proof is not taken from the tree: it computes its own (wrong) root.
    proof = list(fresh[3].batch_proof)
    proof[0] = bytes([proof[0][0] ^ 1]) + proof[0][1:]
    fresh[3] = dataclasses.replace(fresh[3], batch_proof=tuple(proof))
    cache_batch_roots(fresh)
    for sr in fresh:
        assert sr.batch_root() == SignedRecord.from_entry(sr.entry()).batch_root()
    assert fresh[3].batch_root() != signed[0].batch_root()
    assert fresh[4].batch_root() == signed[0].batch_root()


def test_proofs_from_the_store_match_a_rebuilt_tree(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.db"
    leaves = [b"leaf %d" % i for i in range(300)]
    with LedgerStore(path) as store:
        store.append([(None, "t", leaf) for leaf in leaves[:200]])
        store.append([(None, "t", leaf) for leaf in leaves[200:]])
        hashes = [merkle.hash_leaf(leaf) for leaf in leaves]
        for size in (1, 63, 64, 65, 200, 257, 300):
            for index in range(0, size, 7):
                assert store.inclusion_proof(index, size) == merkle.inclusion_proof(
                    index, hashes[:size]
                )
    with LedgerStore(path) as store:  # reopened: the memory caches come from the file
        for index in range(0, 300, 11):
            assert store.inclusion_proof(index, 300) == merkle.inclusion_proof(index, hashes)


def test_worker_processes_refuse_what_one_process_refuses(
    log: Log, parties: Parties, db_path: pathlib.Path
) -> None:
    singles = [sign_records([usage(f"center/wuhan/w{i}")], parties.wuhan)[0] for i in range(40)]
    forged = dataclasses.replace(singles[30], producer_sig=singles[31].producer_sig)
    with Log(LedgerStore(db_path), parties.log_key, workers=2) as pooled:
        size = pooled.size
        with pytest.raises(SignatureError, match="'center/wuhan/w30': producer signature"):
            pooled.append([*singles[:30], forged, *singles[31:]])
        assert pooled.size == size
        assert pooled.append(singles) == list(range(size, size + 40))
        pooled.checkpoint()
        assert pooled.audit().records == 40
