"""Findings of the harness that are reported and still open: the bounded run counts them
(see `Harness.summary`) instead of failing on them, so that `make test` stays green while
their owners fix them. Each names its regression test; remove the entry when the fix
lands and the test is in tests/fuzz/test_findings.py."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KnownOpen:
    name: str
    invariant: str
    # Matched against the broken invariant's detail.
    detail: re.Pattern[str]
    test: str


KNOWN_OPEN: tuple[KnownOpen, ...] = ()


def known(invariant: str, detail: str) -> KnownOpen | None:
    """The open finding this broken invariant is, if it is one."""
    for k in KNOWN_OPEN:
        if k.invariant == invariant and k.detail.search(detail):
            return k
    return None
