"""Multi-party settlement of a period: who owes whom, net positions, and the transfers.

For a period [t0, t1) in charge time (a record's `end_ms`), over the log entries that a
checkpoint covers:

* the effective records: each usage record, or its latest correction in log order;
* the bilateral matrix: `owed[consumer][producer]` += charge;
* net positions: received - paid per party; they sum to zero by construction;
* transfers: debtors and creditors each sorted by (amount descending, name); the largest
  debtor pays the largest creditor the smaller of the two amounts, repeatedly. Every step
  settles at least one party in full, so n parties need at most n - 1 transfers, and the
  order makes the list deterministic.

The statement names the checkpoint (origin, size, root) and the entry range it used, and
is signed by the log key over `STATEMENT_PREFIX || canonical JSON`, so anyone holding
the log recomputes it and gets the same bytes (Ed25519 signatures are deterministic).

A party's statement (`Settlement.for_party`, `"party"` in its JSON) is cut from the whole
one, so that a party learns its own figures and nobody else's beyond its counterparties:
its totals, the matrix cells it pays or is paid in, the transfers it is in, and the
number of records it is in.
"""

from __future__ import annotations

import base64
import calendar
import dataclasses
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from core.ids import shown
from core.money import CURRENCY
from ledger import canonical
from ledger.checkpoint import Checkpoint
from ledger.errors import InvalidRecord, SignatureError
from ledger.keys import SignerKey, VerifierKey
from ledger.records import CHARGING_KINDS, ID_PATTERN, RecordKind, UsageRecord

__all__ = [
    "STATEMENT_PREFIX",
    "PartyTotals",
    "Settlement",
    "Transfer",
    "charged_in",
    "effective_records",
    "period_bounds",
    "settle",
    "sign_statement",
    "verify_statement",
]

STATEMENT_PREFIX = b"icx/ledger/v1 statement\n"
SCHEMA = "icx.statement/v1"
_PERIOD = re.compile(r"([0-9]{4})-([0-9]{2})")
FIRST_YEAR, LAST_YEAR = 1970, 9999


def period_bounds(period: str) -> tuple[int, int]:
    """[t0, t1) in Unix ms UTC of a calendar month `YYYY-MM`, from 1970-01 (usage is
    timed in Unix ms, never negative) to 9999-12. Raises InvalidRecord naming `period`."""
    match = _PERIOD.fullmatch(period)
    if not match or not 1 <= int(match[2]) <= 12:
        raise InvalidRecord(f"period must be YYYY-MM, got {shown(period)}")
    if not FIRST_YEAR <= int(match[1]) <= LAST_YEAR:
        raise InvalidRecord(
            f"period must be YYYY-MM with a year {FIRST_YEAR}..{LAST_YEAR}, got {shown(period)}"
        )
    year, month = int(match[1]), int(match[2])
    t0 = calendar.timegm((year, month, 1, 0, 0, 0)) * 1000
    # The month's length, not the next month's start: 9999-12 has no next year to name.
    t1 = t0 + calendar.monthrange(year, month)[1] * 86_400_000
    return t0, t1


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    payer: str
    payee: str
    amount_minor: int


@dataclass(slots=True, kw_only=True)
class PartyTotals:
    party: str
    records: int = 0  # records the party is in; shown only in its own statement
    device_s_produced: int = 0
    device_s_consumed: int = 0
    energy_wh: int = 0
    carbon_g: int = 0
    received_minor: int = 0
    paid_minor: int = 0

    @property
    def net_minor(self) -> int:
        return self.received_minor - self.paid_minor


@dataclass(frozen=True, slots=True, kw_only=True)
class Settlement:
    period: str
    from_ms: int
    to_ms: int
    currency: str
    checkpoint: Checkpoint
    records: int
    matrix: dict[tuple[str, str], int]
    totals: dict[str, PartyTotals]
    transfers: tuple[Transfer, ...]
    party: str = ""  # set on one party's statement; empty on the whole one

    @property
    def positions(self) -> dict[str, int]:
        return {party: t.net_minor for party, t in self.totals.items()}

    def for_party(self, party: str) -> Settlement:
        """The statement `party` gets, cut from this whole one (see the module docstring).
        A party without usage in the period gets zeros. Raises InvalidRecord for a name
        that is not a party id, or when this is already another party's statement."""
        if not ID_PATTERN.fullmatch(party):
            raise InvalidRecord(f"party must be 1..128 of [A-Za-z0-9._:/@-], got {shown(party)}")
        if self.party and self.party != party:
            raise InvalidRecord(f"this is the statement of {self.party!r}, not of {party!r}")
        # A copy: the totals are mutable and the whole settlement keeps its own.
        totals = dataclasses.replace(self.totals.get(party) or PartyTotals(party=party))
        return dataclasses.replace(
            self,
            party=party,
            records=totals.records,
            matrix={cell: v for cell, v in self.matrix.items() if party in cell},
            totals={party: totals},
            transfers=tuple(t for t in self.transfers if party in (t.payer, t.payee)),
        )

    def to_json(self) -> dict[str, canonical.JsonValue]:
        body: dict[str, canonical.JsonValue] = {
            "schema": SCHEMA,
            "period": self.period,
            "from_ms": self.from_ms,
            "to_ms": self.to_ms,
            "currency": self.currency,
            "checkpoint": {
                "origin": self.checkpoint.origin,
                "size": self.checkpoint.size,
                "root": base64.b64encode(self.checkpoint.root).decode("ascii"),
            },
            "entries": {"begin": 0, "end": self.checkpoint.size},
            "records": self.records,
            "matrix": [
                {"payer": payer, "payee": payee, "amount_minor": amount}
                for (payer, payee), amount in sorted(self.matrix.items())
            ],
            "parties": [
                {
                    "party": t.party,
                    "net_minor": t.net_minor,
                    "received_minor": t.received_minor,
                    "paid_minor": t.paid_minor,
                    "device_s_produced": t.device_s_produced,
                    "device_s_consumed": t.device_s_consumed,
                    "energy_wh": t.energy_wh,
                    "carbon_g": t.carbon_g,
                }
                for _, t in sorted(self.totals.items())
            ],
            "transfers": [
                {"payer": t.payer, "payee": t.payee, "amount_minor": t.amount_minor}
                for t in self.transfers
            ],
        }
        if self.party:
            body["party"] = self.party
        return body


def effective_records(
    records: Iterable[tuple[int, UsageRecord]], size: int
) -> dict[str, UsageRecord]:
    """The records in force among the (index, record) pairs of entries [0, size) in log
    order, by the id of the usage record each stands for: each usage record (every
    metering interval of a run is one), or its latest correction."""
    effective: dict[str, UsageRecord] = {}
    for index, record in records:
        if index >= size:
            raise InvalidRecord(f"entry {index} is beyond the checkpoint (size {size})")
        if record.kind is RecordKind.USAGE:
            effective[record.record_id] = record
        elif record.kind is RecordKind.CORRECTION:
            effective[record.refs] = record
    return effective


def charged_in(record: UsageRecord, from_ms: int, to_ms: int, currency: str) -> bool:
    """Whether a record in force is charged in [from_ms, to_ms) (its `end_ms`, the charge
    time) in `currency`."""
    return (
        record.kind in CHARGING_KINDS
        and record.currency == currency
        and from_ms <= record.end_ms < to_ms
    )


def _transfers(positions: dict[str, int]) -> list[Transfer]:
    debtors = sorted(((-v, p) for p, v in positions.items() if v < 0), key=lambda x: (-x[0], x[1]))
    creditors = sorted(((v, p) for p, v in positions.items() if v > 0), key=lambda x: (-x[0], x[1]))
    out: list[Transfer] = []
    i = j = 0
    owe = debtors[0][0] if debtors else 0
    due = creditors[0][0] if creditors else 0
    while i < len(debtors) and j < len(creditors):
        amount = min(owe, due)
        out.append(Transfer(payer=debtors[i][1], payee=creditors[j][1], amount_minor=amount))
        owe -= amount
        due -= amount
        if owe == 0:
            i += 1
            owe = debtors[i][0] if i < len(debtors) else 0
        if due == 0:
            j += 1
            due = creditors[j][0] if j < len(creditors) else 0
    return out


def settle(
    records: Iterable[tuple[int, UsageRecord]],
    *,
    period: str,
    checkpoint: Checkpoint,
    currency: str = CURRENCY,
) -> Settlement:
    """Settle `period` from the (index, record) pairs of entries [0, checkpoint.size) in
    log order. Records in other currencies are left to their own settlement."""
    t0, t1 = period_bounds(period)
    effective = effective_records(records, checkpoint.size)
    matrix: dict[tuple[str, str], int] = defaultdict(int)
    totals: dict[str, PartyTotals] = {}

    def party(name: str) -> PartyTotals:
        if name not in totals:
            totals[name] = PartyTotals(party=name)
        return totals[name]

    count = 0
    for record in effective.values():
        if not charged_in(record, t0, t1, currency):
            continue
        count += 1
        matrix[(record.consumer, record.producer)] += record.charge_minor
        producer, consumer = party(record.producer), party(record.consumer)
        producer.records += 1
        consumer.records += 1  # a record's producer and consumer always differ
        producer.device_s_produced += record.device_s
        producer.received_minor += record.charge_minor
        producer.energy_wh += record.energy_wh
        producer.carbon_g += record.carbon_g
        consumer.device_s_consumed += record.device_s
        consumer.paid_minor += record.charge_minor
    positions = {name: t.net_minor for name, t in totals.items()}
    return Settlement(
        period=period,
        from_ms=t0,
        to_ms=t1,
        currency=currency,
        checkpoint=checkpoint,
        records=count,
        matrix=dict(matrix),
        totals=totals,
        transfers=tuple(_transfers(positions)),
    )


def sign_statement(settlement: Settlement, signer: SignerKey) -> bytes:
    """The signed statement: canonical JSON of {statement, key, sig}."""
    body = settlement.to_json()
    sig = signer.sign(STATEMENT_PREFIX + canonical.encode(body))
    return canonical.encode(
        {"statement": body, "key": signer.key_id, "sig": base64.b64encode(sig).decode("ascii")}
    )


def verify_statement(data: bytes, key: VerifierKey) -> dict[str, canonical.JsonValue]:
    """Check a signed statement's signature; returns the statement body."""
    value = canonical.decode(data)
    if not isinstance(value, dict) or set(value) != {"statement", "key", "sig"}:
        raise InvalidRecord("statement must be {statement, key, sig}")
    body, key_id, sig = value["statement"], value["key"], value["sig"]
    if not isinstance(body, dict) or not isinstance(sig, str) or key_id != key.key_id:
        raise SignatureError(f"statement is not signed by {key.key_id}")
    if not key.verify(STATEMENT_PREFIX + canonical.encode(body), base64.b64decode(sig)):
        raise SignatureError(f"statement signature by {key.key_id} does not verify")
    return body
