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

Between regions. A log that accepted other logs' records for its tenants
(`ledger.accepted`) owes their owners what those records charge: given this log's own
party name (`home`, its broker's), the statement also carries the region flows
`regions[(home, owner)]`, each naming its entries (this log's index, the owner's origin
and index). An accepted record counts in force as the owner's log has it: of one record
and its corrections, the one latest in the owner's log. The tenant-to-center matrix stays
the log's own records only: an accepted record is its owner's to settle with its center,
and counting it here too would count the tenant twice. `federation_view` puts several
regions' logs together: tenant-center positions from every log's own records,
region-region positions from every log's accepted entries, each summing to zero, and a
cross-check that every accepted entry holds the very bytes its owner's log holds.
"""

from __future__ import annotations

import base64
import calendar
import dataclasses
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from core.ids import shown
from core.money import CURRENCY
from ledger import canonical
from ledger.accepted import AcceptedRecord
from ledger.checkpoint import Checkpoint
from ledger.errors import InvalidRecord, SignatureError, VerificationError
from ledger.keys import SignerKey, VerifierKey
from ledger.records import CHARGING_KINDS, ID_PATTERN, RecordKind, UsageRecord

__all__ = [
    "STATEMENT_PREFIX",
    "AcceptedRef",
    "FederationView",
    "PartyTotals",
    "RegionLog",
    "Settlement",
    "Transfer",
    "charged_in",
    "effective_records",
    "federation_view",
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


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedRef:
    """The entries behind one accepted record in a region flow: its accepted entry in
    this log (`index`) and the record in its owner's log (`origin`, `owner_index`)."""

    index: int
    origin: str
    owner_index: int


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
    # What this log's region owes other regions for the records it accepted:
    # (this region, the owner) -> amount, and the entries behind each flow.
    regions: dict[tuple[str, str], int] = field(default_factory=dict)
    region_entries: dict[tuple[str, str], tuple[AcceptedRef, ...]] = field(default_factory=dict)

    @property
    def positions(self) -> dict[str, int]:
        return {party: t.net_minor for party, t in self.totals.items()}

    @property
    def region_positions(self) -> dict[str, int]:
        """Net of the region flows per region party: payee +, payer -; sums to zero."""
        return _net(self.regions)

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
            regions={cell: v for cell, v in self.regions.items() if party in cell},
            region_entries={c: e for c, e in self.region_entries.items() if party in c},
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
        if self.regions:
            # Only when there is a flow: a statement without one keeps the bytes it had.
            body["regions"] = [
                {
                    "payer": payer,
                    "payee": payee,
                    "amount_minor": amount,
                    "entries": [
                        {"index": e.index, "origin": e.origin, "owner_index": e.owner_index}
                        for e in self.region_entries[(payer, payee)]
                    ],
                }
                for (payer, payee), amount in sorted(self.regions.items())
            ]
        return body

    @staticmethod
    def home_of(body: dict[str, canonical.JsonValue]) -> str:
        """The `home` a statement body was settled with, as far as it shows: the payer
        of its region flows, or "" when it has none (settling with no `home` then gives
        the same bytes)."""
        flows = body.get("regions")
        if isinstance(flows, list) and flows and isinstance(flows[0], dict):
            payer = flows[0].get("payer")
            if isinstance(payer, str):
                return payer
        return ""


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


def _net(flows: dict[tuple[str, str], int]) -> dict[str, int]:
    """Received - paid per party of a (payer, payee) -> amount matrix."""
    net: dict[str, int] = defaultdict(int)
    for (payer, payee), amount in flows.items():
        net[payer] -= amount
        net[payee] += amount
    return dict(net)


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


def _region_flows(
    accepted: Iterable[tuple[int, AcceptedRecord]],
    *,
    home: str,
    size: int,
    t0: int,
    t1: int,
    currency: str,
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], tuple[AcceptedRef, ...]]]:
    """What `home` owes each owner for the accepted records charged in [t0, t1): of one
    owner's record and its corrections, the one latest in the owner's log is in force."""
    if not ID_PATTERN.fullmatch(home):
        raise InvalidRecord(f"home must be 1..128 of [A-Za-z0-9._:/@-], got {shown(home)}")
    in_force: dict[tuple[str, str], tuple[int, AcceptedRecord]] = {}
    for index, item in accepted:
        if index >= size:
            raise InvalidRecord(f"entry {index} is beyond the checkpoint (size {size})")
        if item.owner == home:
            raise InvalidRecord(
                f"entry {index} accepts {item.accepted_id} from {home!r}, this region itself"
            )
        record = item.record
        base = record.refs if record.kind is RecordKind.CORRECTION else record.record_id
        key = (item.origin, base)
        held = in_force.get(key)
        if held is None or held[1].index < item.index:
            in_force[key] = (index, item)
    flows: dict[tuple[str, str], int] = defaultdict(int)
    refs: dict[tuple[str, str], list[AcceptedRef]] = defaultdict(list)
    for index, item in sorted(in_force.values(), key=lambda pair: pair[0]):
        if not charged_in(item.record, t0, t1, currency):
            continue
        cell = (home, item.owner)
        flows[cell] += item.record.charge_minor
        refs[cell].append(AcceptedRef(index=index, origin=item.origin, owner_index=item.index))
    return dict(flows), {cell: tuple(entries) for cell, entries in refs.items()}


def settle(
    records: Iterable[tuple[int, UsageRecord]],
    *,
    period: str,
    checkpoint: Checkpoint,
    currency: str = CURRENCY,
    home: str = "",
    accepted: Iterable[tuple[int, AcceptedRecord]] = (),
) -> Settlement:
    """Settle `period` from the (index, record) pairs of entries [0, checkpoint.size) in
    log order. Records in other currencies are left to their own settlement. With
    `home`, this log's own party (its broker's name), also the region flows from the
    (index, accepted record) pairs among those entries; without it they are skipped."""
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
    regions: dict[tuple[str, str], int] = {}
    region_entries: dict[tuple[str, str], tuple[AcceptedRef, ...]] = {}
    if home:
        regions, region_entries = _region_flows(
            accepted, home=home, size=checkpoint.size, t0=t0, t1=t1, currency=currency
        )
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
        regions=regions,
        region_entries=region_entries,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionLog:
    """One region's log as `federation_view` reads it, at one checkpoint: the region's
    party (its broker's name), the checkpoint, its own usage records and its accepted
    entries among the entries the checkpoint covers (index, value), and its leaf bytes
    by index (`leaf` raises EntryNotFound beyond the log)."""

    party: str
    checkpoint: Checkpoint
    records: Sequence[tuple[int, UsageRecord]]
    accepted: Sequence[tuple[int, AcceptedRecord]]
    leaf: Callable[[int], bytes]

    def __post_init__(self) -> None:
        if not ID_PATTERN.fullmatch(self.party):
            raise InvalidRecord(
                f"region party must be 1..128 of [A-Za-z0-9._:/@-], got {shown(self.party)}"
            )

    @property
    def origin(self) -> str:
        return self.checkpoint.origin


@dataclass(frozen=True, slots=True, kw_only=True)
class FederationView:
    """A period across the federation: each region's statement (with its region flows and
    the entries behind them), the tenant-center positions of every region's own records
    and the region-region flows of every region's accepted entries; each set of positions
    sums to zero. `accepted` counts the accepted entries cross-checked."""

    period: str
    currency: str
    statements: dict[str, Settlement]
    positions: dict[str, int]
    regions: dict[tuple[str, str], int]
    accepted: int

    @property
    def region_positions(self) -> dict[str, int]:
        """Net of the region flows per region party: payee +, payer -."""
        return _net(self.regions)


def _cross_check(
    region: RegionLog, index: int, item: AcceptedRecord, owner: RegionLog | None
) -> None:
    """Raise VerificationError, naming both entries, unless the owner's log in the view
    holds at `item.index`, under its checkpoint, the very leaf `item` accepted."""
    where = f"{region.party} entry {index} (of {region.origin}) accepts {item.accepted_id}"
    if owner is None:
        raise VerificationError(f"{where}, but log {item.origin!r} is not in the view")
    if owner.party != item.owner:
        raise VerificationError(
            f"{where} from {item.owner!r}, but log {item.origin!r} is region {owner.party!r}"
        )
    if item.index >= owner.checkpoint.size:
        raise VerificationError(
            f"{where}, but {owner.party} entry {item.index} is beyond its checkpoint "
            f"(size {owner.checkpoint.size})"
        )
    if owner.leaf(item.index) != item.bundle.leaf:
        raise VerificationError(
            f"{where}, but {owner.party} entry {item.index} (of {owner.origin}) holds "
            "other bytes than the accepted record"
        )


def federation_view(
    regions: Sequence[RegionLog], *, period: str, currency: str = CURRENCY
) -> FederationView:
    """Settle `period` in every region (each as its own `home`) and put the statements
    together: tenant-center positions from every region's own records, region-region
    flows from every region's accepted entries. First cross-checks every accepted entry
    against its owner's log in the view (`_cross_check`): raises VerificationError
    naming both entries at the first that fails, InvalidRecord when two regions share a
    party or a log."""
    by_origin: dict[str, RegionLog] = {}
    parties: set[str] = set()
    for region in regions:
        if region.origin in by_origin or region.party in parties:
            raise InvalidRecord(
                f"region {region.party!r} (log {region.origin!r}) is in the view twice"
            )
        by_origin[region.origin] = region
        parties.add(region.party)
    checked = 0
    for region in regions:
        for index, item in region.accepted:
            _cross_check(region, index, item, by_origin.get(item.origin))
            checked += 1
    statements = {
        region.party: settle(
            region.records,
            period=period,
            checkpoint=region.checkpoint,
            currency=currency,
            home=region.party,
            accepted=region.accepted,
        )
        for region in regions
    }
    positions: dict[str, int] = defaultdict(int)
    flows: dict[tuple[str, str], int] = defaultdict(int)
    for statement in statements.values():
        for party, net in statement.positions.items():
            positions[party] += net
        for cell, amount in statement.regions.items():
            flows[cell] += amount
    return FederationView(
        period=period,
        currency=currency,
        statements=statements,
        positions=dict(positions),
        regions=dict(flows),
        accepted=checked,
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
