"""The coordinator's policy on a running broker: the version in force, its history, and
a change checked, stored and put in force for the next round.

Which policy is in force at start: the store's latest change, if it holds any; else the
broker's `--policy` file (or the built-in defaults), reported as version 0 and stored
only once a coordinator sets a policy. A coordinator's change is version n + 1, checked
with `broker.policy.parse_policy` first (a bad one changes nothing), committed, then
used from the next round, and logged with who made it and what it changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from broker.policy import parse_policy, policy_document
from broker.store import Snapshot, Store
from core.clock import Clock
from core.errors import InvalidArgument, InvalidConfig
from core.ids import shown
from core.national import PolicyVersion
from matcher import Problem

log = logging.getLogger("icx.broker.policy")

# The largest policy document and comment a coordinator may send.
MAX_POLICY_BYTES = 256 * 1024
MAX_COMMENT_CHARS = 1_000


class PolicyBook:
    """The policy in force and every stored change. `use` puts a round template in
    force (the broker's rounds read it from their next round)."""

    def __init__(
        self, store: Store, clock: Clock, template: Problem, use: Callable[[Problem], None]
    ) -> None:
        self.store = store
        self.clock = clock
        self._use = use
        self.template = template
        self.changes: list[PolicyVersion] = []
        self.current = PolicyVersion(
            version=0, policy_json=json.dumps(policy_document(template), indent=2)
        )

    def load(self, snapshot: Snapshot) -> None:
        """The store's latest change, if any, replaces the start-up policy."""
        self.changes = list(snapshot.policy_changes)
        if not self.changes:
            return
        latest = self.changes[-1]
        try:
            template = parse_policy(json.loads(latest.policy_json))
        except (ValueError, InvalidConfig) as exc:  # the store was written by a checked set
            raise InvalidConfig(f"stored policy version {latest.version}: {exc}") from exc
        log.info(
            "policy version %d (set by %s) from the store is in force; a --policy file "
            "applies only to a store without one",
            latest.version,
            latest.set_by,
        )
        self._put(latest, template)

    async def set(self, policy_json: str, comment: str, who: str) -> PolicyVersion:
        """Check, store and use a new policy; returns it once committed. InvalidArgument
        (naming the field) for a bad one, and nothing changes."""
        if len(policy_json.encode()) > MAX_POLICY_BYTES:
            raise InvalidArgument(
                f"policy_json must be at most {MAX_POLICY_BYTES} bytes, got "
                f"{len(policy_json.encode())}"
            )
        if len(comment) > MAX_COMMENT_CHARS:
            raise InvalidArgument(
                f"comment must be at most {MAX_COMMENT_CHARS} characters, got {shown(comment)}"
            )
        try:
            doc = json.loads(policy_json, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(
                f"policy_json is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc
        except (ValueError, RecursionError) as exc:
            raise InvalidArgument(f"policy_json: {_reason(exc)}") from exc
        try:
            template = parse_policy(doc)
        except InvalidConfig as exc:
            raise InvalidArgument(str(exc)) from exc
        except (ArithmeticError, ValueError, RecursionError) as exc:  # e.g. 1e308 yuan
            raise InvalidArgument(f"policy: {_reason(exc)}") from exc
        change = PolicyVersion(
            version=self.current.version + 1 if self.changes else 1,
            policy_json=json.dumps(doc, indent=2),
            set_by=who,
            set_at_ms=self.clock.now_ms(),
            comment=comment,
        )
        await self.store.put_policy_change(change)
        before = policy_document(self.template)
        self.changes.append(change)
        self._put(change, template)
        changed = _differences(before, policy_document(template))
        log.info(
            "policy version %d set by %s%s: %s",
            change.version,
            who,
            f" ({comment})" if comment else "",
            "; ".join(changed) if changed else "no figure changed",
        )
        return change

    def history(self, limit: int) -> list[PolicyVersion]:
        """The stored changes, newest first, at most `limit`."""
        return self.changes[::-1][:limit]

    def _put(self, change: PolicyVersion, template: Problem) -> None:
        self.current = change
        self.template = template
        self._use(template)


def _flat(doc: object, prefix: str = "") -> dict[str, object]:
    if isinstance(doc, dict) and doc:
        out: dict[str, object] = {}
        for key, value in doc.items():
            out |= _flat(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: doc}


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number a policy can hold")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, ArithmeticError):
        return f"a number out of range ({exc})"
    return str(exc)


def _differences(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """`field old -> new` for each figure that differs."""
    old, new = _flat(before), _flat(after)
    return [
        f"{key} {json.dumps(old.get(key))} -> {json.dumps(new.get(key))}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]
