"""RFC 6962 / RFC 9162 Merkle trees: hashing, inclusion and consistency proofs.

A public API for outside auditors' tools: nothing here depends on the rest of icx.

Hashing (RFC 9162 section 2.1.1): SHA-256, a leaf is `H(0x00 || data)`, an interior node
`H(0x01 || left || right)`, the empty tree `H()`. A tree of n > 1 leaves splits at k, the
largest power of two smaller than n.

Proofs are lists of 32-byte hashes, deepest first, exactly as RFC 9162 sections 2.1.3 and
2.1.4 define them, so they interoperate with transparency-dev/merkle and Trillian.

Generation works on *perfect nodes*: node (level, index) is the root of the complete
subtree over leaves [index * 2**level, (index + 1) * 2**level). Once written such a node
never changes, so a store can keep them and answer any proof by looking up O(log n)
of them (`inclusion_plan`, `consistency_plan`, `range_nodes`) instead of rebuilding the
tree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from ledger.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "ProofError",
    "consistency_plan",
    "consistency_proof",
    "hash_children",
    "hash_leaf",
    "hash_range",
    "inclusion_plan",
    "inclusion_proof",
    "range_nodes",
    "root",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
MAX_SIZE = (1 << 64) - 1
"""Tree sizes and indices are uint64 in every interoperable encoding."""

EMPTY_ROOT = hashlib.sha256(b"").digest()

Node = tuple[int, int]
"""(level, index) of a perfect node."""

Range = tuple[int, int]
"""[begin, end) of leaves whose RFC 6962 hash is one proof element."""


def hash_leaf(data: bytes) -> bytes:
    """The leaf hash of `data`: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """The interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n; requires n > 1."""
    return 1 << ((n - 1).bit_length() - 1)


def range_nodes(begin: int, end: int) -> list[Node]:
    """The perfect nodes that make up [begin, end), left to right, largest first.

    Requires 0 <= begin <= end and begin aligned so that the RFC 6962 hash of the range
    is the right fold of these nodes; every range in a plan below is.
    """
    nodes: list[Node] = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        if begin:
            level = min(level, (begin & -begin).bit_length() - 1)
        nodes.append((level, begin >> level))
        begin += 1 << level
    return nodes


def hash_range(begin: int, end: int, node: Callable[[int, int], bytes]) -> bytes:
    """The RFC 6962 hash of leaves [begin, end), from perfect node hashes `node(l, i)`."""
    if begin == end:
        return EMPTY_ROOT
    hashes = [node(level, index) for level, index in range_nodes(begin, end)]
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = hash_children(h, acc)
    return acc


def inclusion_plan(index: int, size: int) -> list[Range]:
    """The leaf ranges whose hashes form the inclusion proof of `index` in a tree of
    `size` (RFC 9162 PATH), deepest first. Requires 0 <= index < size."""
    if not 0 <= index < size:
        raise ProofError(f"index is beyond size: {index} >= {size}")
    # Below level `inner` the leaf's path and the last leaf's differ: the sibling at
    # level l is the subtree next to the leaf's, cut off at `size` on the right edge.
    # Above it, the leaf lies on the right edge, and each sibling is a whole subtree on
    # the left where the index has a one bit (the "border" of the verifier below).
    out: list[Range] = []
    inner = (index ^ (size - 1)).bit_length()
    for level in range(inner):
        begin = ((index >> level) ^ 1) << level
        out.append((begin, min(begin + (1 << level), size)))
    level = inner
    while index >> level:
        if (index >> level) & 1:
            begin = ((index >> level) ^ 1) << level
            out.append((begin, begin + (1 << level)))
        level += 1
    return out


def consistency_plan(size1: int, size2: int) -> list[Range]:
    """The leaf ranges whose hashes form the consistency proof from `size1` to `size2`
    (RFC 9162 SUBPROOF), deepest first. Requires 0 <= size1 <= size2; empty when size1
    is 0 or equals size2."""
    if not 0 <= size1 <= size2:
        raise ProofError(f"size1 must be 0..size2 ({size2}), got {size1}")
    out: list[Range] = []
    if size1 == 0:
        return out

    def subproof(m: int, begin: int, end: int, whole: bool) -> None:
        n = end - begin
        if m == n:
            if not whole:
                out.append((begin, end))
            return
        k = _split(n)
        if m <= k:
            subproof(m, begin, begin + k, whole)
            out.append((begin + k, end))
        else:
            subproof(m - k, begin + k, end, False)
            out.append((begin, begin + k))

    subproof(size1, 0, size2, True)
    return out


class _Tree:
    """Every perfect node of a list of leaf hashes, built level by level."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        for i, h in enumerate(leaf_hashes):
            if len(h) != HASH_SIZE:
                raise ProofError(f"leaf hash {i} must be {HASH_SIZE} bytes, got {len(h)}")
        self.levels: list[Sequence[bytes]] = [leaf_hashes]
        while len(self.levels[-1]) >= 2:
            below = self.levels[-1]
            self.levels.append(
                [hash_children(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            )

    def node(self, level: int, index: int) -> bytes:
        return self.levels[level][index]


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The RFC 6962 root hash of a tree with these leaf hashes (EMPTY_ROOT when none)."""
    frontier = Frontier()
    for h in leaf_hashes:
        frontier.append(h)
    return frontier.root()


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The inclusion proof of leaf `index`. Requires 0 <= index < len(leaf_hashes)."""
    plan = inclusion_plan(index, len(leaf_hashes))
    tree = _Tree(leaf_hashes)
    return [hash_range(b, e, tree.node) for b, e in plan]


def consistency_proof(size1: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The consistency proof from the tree of the first `size1` leaves to the whole tree.
    Requires 0 <= size1 <= len(leaf_hashes); empty when size1 is 0 or the whole size."""
    plan = consistency_plan(size1, len(leaf_hashes))
    tree = _Tree(leaf_hashes)
    return [hash_range(b, e, tree.node) for b, e in plan]


class Frontier:
    """The right edge of a growing tree: the perfect nodes that make up [0, size).

    `append` returns every perfect node the new leaf completes, so a store can write them
    once; `root` is the tree's current root. Restore with `Frontier.restore`.
    """

    __slots__ = ("_nodes", "size")

    def __init__(self) -> None:
        self.size = 0
        self._nodes: list[tuple[int, bytes]] = []  # (level, hash), largest first

    @classmethod
    def restore(cls, size: int, node: Callable[[int, int], bytes]) -> Frontier:
        """The frontier of a tree of `size` leaves whose perfect nodes `node` returns."""
        frontier = cls()
        frontier.size = size
        frontier._nodes = [(lvl, node(lvl, idx)) for lvl, idx in range_nodes(0, size)]
        return frontier

    def copy(self) -> Frontier:
        other = Frontier()
        other.size = self.size
        other._nodes = list(self._nodes)
        return other

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf; return the new perfect nodes (level, index, hash), leaf first."""
        if len(leaf_hash) != HASH_SIZE:
            raise ProofError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf_hash)}")
        index = self.size
        created = [(0, index, leaf_hash)]
        level, acc = 0, leaf_hash
        while self._nodes and self._nodes[-1][0] == level:
            _, left = self._nodes.pop()
            acc = hash_children(left, acc)
            level += 1
            created.append((level, index >> level, acc))
        self._nodes.append((level, acc))
        self.size += 1
        return created

    def edge(self) -> dict[Node, bytes]:
        """The perfect nodes that make up [0, size), by (level, index)."""
        return {
            node: h for node, (_, h) in zip(range_nodes(0, self.size), self._nodes, strict=True)
        }

    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        acc = self._nodes[-1][1]
        for _, h in reversed(self._nodes[:-1]):
            acc = hash_children(h, acc)
        return acc


# Verification, after RFC 9162 sections 2.1.3.2 and 2.1.4.2 in the bit-twiddling form of
# transparency-dev/merkle (proof/verify.go): an inclusion proof splits into an "inner"
# part, where the leaf's path and the last leaf's path differ, and a "border" part along
# the right edge, where every sibling sits on the left.


def _check_size(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SIZE:
        raise ProofError(f"{name} must be an integer 0..2**64-1, got {value!r}")
    return value


def _check_hash(name: str, value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise ProofError(f"{name} must be {HASH_SIZE} bytes, got {got}")
    return value


def _check_proof(proof: object) -> list[bytes]:
    if not isinstance(proof, list | tuple):
        raise ProofError(f"proof must be a list of hashes, got {type(proof).__name__}")
    return [_check_hash(f"proof[{i}]", h) for i, h in enumerate(proof)]


def _decompose(index: int, size: int) -> tuple[int, int]:
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = hash_children(h, seed) if (index >> i) & 1 else hash_children(seed, h)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = hash_children(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = hash_children(h, seed)
    return seed


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """The root that an inclusion proof of `leaf_hash` at `index` in a tree of `size`
    leads to. Requires 0 <= index < size; raises ProofError on malformed input."""
    index = _check_size("index", index)
    size = _check_size("size", size)
    leaf_hash = _check_hash("leaf hash", leaf_hash)
    hashes = _check_proof(proof)
    if index >= size:
        raise ProofError(f"index is beyond size: {index} >= {size}")
    inner, border = _decompose(index, size)
    if len(hashes) != inner + border:
        raise ProofError(f"wrong proof size {len(hashes)}, want {inner + border}")
    calculated = _chain_inner(leaf_hash, hashes[:inner], index)
    return _chain_border_right(calculated, hashes[inner:])


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> None:
    """Check that `leaf_hash` is leaf `index` of the tree of `size` leaves with `root`.

    Requires 0 <= index < size. Raises ProofError saying why on any failure, malformed
    input included."""
    root = _check_hash("root", root)
    calculated = root_from_inclusion_proof(leaf_hash, index, size, proof)
    if calculated != root:
        raise ProofError(
            f"root mismatch: proof gives {calculated.hex()}, checkpoint has {root.hex()}"
        )


def verify_consistency(
    size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of `size1` leaves with `root1` is a prefix of the tree of
    `size2` leaves with `root2`.

    Requires size1 <= size2. The empty tree is a prefix of every tree: from size 0 the
    proof must be empty and `root1` the empty root. Raises ProofError saying why on any
    failure, malformed input included."""
    size1 = _check_size("size1", size1)
    size2 = _check_size("size2", size2)
    root1 = _check_hash("root1", root1)
    root2 = _check_hash("root2", root2)
    hashes = _check_proof(proof)
    if size2 < size1:
        raise ProofError(f"size2 ({size2}) < size1 ({size1})")
    if size1 == 0:
        if hashes:
            raise ProofError(f"expected empty proof from size 0, got {len(hashes)} hashes")
        if root1 != EMPTY_ROOT:
            raise ProofError(f"root1 of an empty tree must be {EMPTY_ROOT.hex()}")
        return
    if size1 == size2:
        if hashes:
            raise ProofError(f"size1 = size2 = {size1}, but proof has {len(hashes)} hashes")
        if root1 != root2:
            raise ProofError(f"size1 = size2 = {size1}, but the roots differ")
        return
    if not hashes:
        raise ProofError("empty proof")

    inner, border = _decompose(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift  # shift < inner because size1 < size2
    # The proof starts with the root of the subtree of size 2**shift that ends at size1,
    # unless size1 is that very subtree: then it is root1 itself.
    if size1 == 1 << shift:
        seed, rest = root1, hashes
    else:
        seed, rest = hashes[0], hashes[1:]
    if len(rest) != inner + border:
        want = inner + border + len(hashes) - len(rest)
        raise ProofError(f"wrong proof size {len(hashes)}, want {want}")

    mask = (size1 - 1) >> shift
    hash1 = _chain_inner_right(seed, rest[:inner], mask)
    hash1 = _chain_border_right(hash1, rest[inner:])
    if hash1 != root1:
        raise ProofError(f"root1 mismatch: proof gives {hash1.hex()}, expected {root1.hex()}")
    hash2 = _chain_inner(seed, rest[:inner], mask)
    hash2 = _chain_border_right(hash2, rest[inner:])
    if hash2 != root2:
        raise ProofError(f"root2 mismatch: proof gives {hash2.hex()}, expected {root2.hex()}")
