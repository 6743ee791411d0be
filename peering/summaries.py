"""One topic's view of the federation: for each origin, the latest envelope heard.

Gossip is a hint. The view keeps the newest envelope per origin (by version, then the
time the origin signed it) and remembers what it learnt it lacks: versions that other
origins' heads name above what it holds. Whoever owns the view pulls those, and the
origins silent for too long. A pure library: values in, values out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from peering.envelope import Envelope

__all__ = ["Summaries", "Summary"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    origin: str
    version: int
    issued_at_ms: int
    payload: bytes
    envelope: bytes  # as the origin signed it: what a pull of this origin returns

    @property
    def key(self) -> tuple[int, int]:
        """The order of one origin's summaries: version, then signing time."""
        return (self.version, self.issued_at_ms)

    def age_ms(self, now_ms: int) -> int:
        """How long ago the origin signed it (0 if its clock runs ahead of ours)."""
        return max(0, now_ms - self.issued_at_ms)


class Summaries:
    """origin -> latest Summary of one topic."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._latest: dict[str, Summary] = {}
        # origin -> (a version known to exist above the one held, peers that hold it)
        self._wanted: dict[str, tuple[int, frozenset[str]]] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def __iter__(self) -> Iterator[Summary]:
        return iter(sorted(self._latest.values(), key=lambda s: s.origin))

    def get(self, origin: str) -> Summary | None:
        return self._latest.get(origin)

    def versions(self) -> dict[str, int]:
        return {o: s.version for o, s in self._latest.items()}

    def offer(self, envelope: Envelope, encoded: bytes) -> Summary | None:
        """Keep `envelope` (checked by the caller; `encoded` its bytes) if it is newer
        than what is held of its origin: the new Summary, or None when it is not."""
        summary = Summary(
            origin=envelope.origin,
            version=envelope.version,
            issued_at_ms=envelope.issued_at_ms,
            payload=envelope.payload,
            envelope=encoded,
        )
        return summary if self.put(summary) else None

    def put(self, summary: Summary) -> bool:
        """Keep `summary` if it is newer than the one held of its origin (by version,
        then signing time); whether it was kept."""
        held = self._latest.get(summary.origin)
        if held is not None and summary.key <= held.key:
            return False
        self._latest[summary.origin] = summary
        wanted = self._wanted.get(summary.origin)
        if wanted is not None and wanted[0] <= summary.version:
            del self._wanted[summary.origin]
        return True

    def note_heads(self, heads: tuple[tuple[str, int], ...], holder: str, own: str) -> None:
        """`holder` (a peer id) says it holds these versions: remember those above ours
        (not of `own`, this view's own origin, which nobody knows better)."""
        for origin, version in heads:
            held = self._latest.get(origin)
            if origin == own or (held is not None and held.version >= version):
                continue
            known, holders = self._wanted.get(origin, (0, frozenset()))
            if version > known:
                self._wanted[origin] = (version, frozenset({holder}))
            elif version == known:
                self._wanted[origin] = (version, holders | {holder})

    def wanted(self) -> dict[str, tuple[int, frozenset[str]]]:
        """origin -> (version known to exist above the one held, peers that hold it)."""
        return dict(self._wanted)

    def silent(self, now_ms: int, bound_ms: int, own: str) -> list[str]:
        """Origins (other than `own`) whose latest envelope is older than `bound_ms`."""
        return sorted(
            o for o, s in self._latest.items() if o != own and s.age_ms(now_ms) > bound_ms
        )
