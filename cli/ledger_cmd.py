"""`icx ledger ...` and `icx settle`: the ledger's tools.

Each command reads the ledger file (`--db PATH`) and calls `ledger` directly, offline,
or asks a broker over gRPC (`--broker ADDR`, else $ICX_BROKER) through the client. The
log's signer key lives beside the file in `PATH.key` (written by `sample`, mode 0600)
and is needed only by what signs: a new checkpoint and a settlement statement.
`icx ledger trust` writes the trust policy that `verify` checks against.

Money is printed in major units of the settlement's currency with the currency named;
JSON and CSV keep integer minor units (`*_minor`) beside a `currency` field.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import witness_cmd
from cli._client import DEFAULT_BROKER, add_identity_flags, connect
from cli._output import EXIT_FAILED, EXIT_OK, command, print_json, print_table
from core.errors import InvalidArgument, NotFound
from core.money import format_major

if TYPE_CHECKING:  # the ledger takes a quarter second to import: commands load it
    from cryptography import x509

    from ledger import Log, TrustPolicy
    from ledger.settlement import RegionLog

_DEFAULT_ORIGIN = "icx.local/ledger"
_LEDGER_FILE = "<db>.ledger, the broker's ledger file beside its database"
_FEDERATED = "icx/"  # a federated broker's log origin is icx/<its name> (broker.witnessing)


def _key_path(args: argparse.Namespace) -> Path:
    return Path(args.key) if args.key else Path(f"{args.db}.key")


def _check_ledger_file(path: Path) -> None:
    """Refuse, in one line naming `path` and what is expected, anything but a ledger
    file: nothing there (NotFound), a folder, a file that is not SQLite or holds no log
    key (InvalidArgument). Reads through a read-only connection: LedgerStore opens for
    writing and would add the ledger's tables to a wrong file."""
    if not path.exists():
        raise NotFound(f"no ledger file at {path}: give {_LEDGER_FILE}")
    if path.is_dir():
        raise InvalidArgument(f"{path} is a folder, not a ledger file: give {_LEDGER_FILE}")
    import sqlite3

    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            has_meta = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
            key = has_meta and db.execute("SELECT 1 FROM meta WHERE name = 'log_key'").fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise InvalidArgument(f"{path} is not a ledger ({exc}): give {_LEDGER_FILE}") from exc
    if not key:
        beside = path.with_name(f"{path.name}.ledger")
        expected = (
            f"{beside}, the broker's ledger file beside its database"
            if beside.is_file()
            else _LEDGER_FILE
        )
        raise InvalidArgument(f"{path} is not a ledger (it holds no log key): give {expected}")


def _broker_of(origin: str) -> str:
    """The broker a federated log is named after (origin `icx/<name>`), else ""."""
    return origin.removeprefix(_FEDERATED) if origin.startswith(_FEDERATED) else ""


def _open(args: argparse.Namespace, *, signing: bool = False) -> Log:
    from ledger import LedgerStore, Log, SignerKey

    path = Path(args.db)
    _check_ledger_file(path)
    signer = None
    key_path = _key_path(args)
    if signing:
        if not key_path.exists():
            raise NotFound(f"no signer key at {key_path}; this command signs")
        signer = SignerKey.parse(key_path.read_text())
    return Log(LedgerStore(path), signer)


def read_input(path_text: str, what: str, hint: str = "") -> str:
    """A text file the user named, or one line saying it is not there, cannot be read
    or is not UTF-8 text (exit 2)."""
    path = Path(path_text)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidArgument(f"no {what} at {path}{hint}") from None
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{what} {path} is not UTF-8 text") from exc


def _db_args(p: argparse.ArgumentParser, *, remote: bool = False) -> None:
    if remote:
        where = p.add_mutually_exclusive_group()
        where.add_argument("--db", help="the ledger database file (offline)")
        where.add_argument(
            "--broker",
            metavar="HOST:PORT",
            help=f"ask this broker over gRPC (without --db: $ICX_BROKER, else {DEFAULT_BROKER})",
        )
        add_identity_flags(p)
    else:
        p.add_argument("--db", required=True, help="the ledger database file")
    p.add_argument("--key", help="the log's signer key file (default: DB.key)")


def _json_flag(p: argparse.ArgumentParser, what: str = "print JSON for scripts") -> None:
    p.add_argument("--json", action="store_true", help=what)


# ------------------------------------------------------------------ sample


@command
def cmd_sample(args: argparse.Namespace) -> int:
    from ledger import LedgerStore, Log, SignerKey, TrustPolicy
    from ledger import sample as ledger_sample
    from ledger.settlement import period_bounds

    path = Path(args.db)
    if path.exists():
        raise InvalidArgument(f"{path} already exists; sample fills a new ledger")
    if args.records < 0 or args.centers < 1 or args.tenants < 1 or args.batch < 1:
        raise InvalidArgument("--records must be >= 0, --centers, --tenants and --batch >= 1")
    start_ms, _ = period_bounds(args.period)
    signer = SignerKey.generate(args.origin)
    key_path = _key_path(args)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.text() + "\n")
    store = LedgerStore(path)
    policy_path = Path(f"{path}.policy.json")
    try:
        log = Log.create(store, signer)
        ledger_sample.fill(
            log,
            records=args.records,
            centers=args.centers,
            tenants=args.tenants,
            seed=args.seed,
            start_ms=start_ms,
            span_ms=28 * 24 * 3600 * 1000,
            batch=args.batch,
        )
        log.checkpoint()
        policy_path.write_text(TrustPolicy(log=signer.verifier).to_json())
    finally:
        store.close()
    if args.json:
        print_json(
            {
                "db": str(path),
                "records": args.records,
                "centers": args.centers,
                "size": log.size,
                "key_file": str(key_path),
                "policy_file": str(policy_path),
            }
        )
        return EXIT_OK
    print(f"{path}: {args.records} records from {args.centers} centers, checkpoint at {log.size}")
    print(f"signer key {key_path}, trust policy {policy_path}")
    return EXIT_OK


# ------------------------------------------------------------------ key, checkpoint, trust


@command
def cmd_key(args: argparse.Namespace) -> int:
    if args.db:
        key = _open(args).log_key
    else:
        with connect(args, timeout_s=30.0) as client:
            key = client.log_key()
    if args.json:
        print_json({"key": key.text(), "name": key.name, "key_id": key.key_id})
    else:
        print(key.text())
    return EXIT_OK


@command
def cmd_checkpoint(args: argparse.Namespace) -> int:
    if args.db:
        log = _open(args, signing=args.new)
        if args.new:
            log.checkpoint()
        note = log.latest_note()
    else:
        if args.new:
            raise InvalidArgument(
                "--new signs with the log's key: give --db (the broker signs its own)"
            )
        with connect(args, timeout_s=30.0) as client:
            note = client.checkpoint()
    if args.json:
        origin, size, root = note.splitlines()[:3]
        print_json({"origin": origin, "size": int(size), "root": root, "note": note})
    else:
        sys.stdout.write(note)
    return EXIT_OK


@command
def cmd_trust(args: argparse.Namespace) -> int:
    """Write the trust policy that `icx ledger verify` checks against: the log's key (as
    the broker or the ledger file names it), the witnesses' keys and the quorum."""
    from ledger import TrustPolicy, VerifierKey

    witnesses = tuple(VerifierKey.parse(w) for w in args.witness or ())  # bad input first
    if args.db:
        log_key = _open(args).log_key
    else:
        with connect(args, timeout_s=30.0) as client:
            log_key = client.log_key()
    quorum = len(witnesses) if args.quorum is None else args.quorum
    policy = TrustPolicy(log=log_key, witnesses=witnesses, quorum=quorum)
    text = policy.to_json()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(
            f"wrote {args.output}: log key {log_key.key_id} ({log_key.name}), "
            f"{len(witnesses)} witness(es), quorum {quorum}; check the key against the one "
            "the broker's operator publishes",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return EXIT_OK


# ------------------------------------------------------------------ prove, verify, audit


@command
def cmd_prove(args: argparse.Namespace) -> int:
    if (args.record_id is None) == (args.index is None):
        raise InvalidArgument("give a RECORD_ID or --index N")
    if args.db:
        bundle = _open(args).prove(record_id=args.record_id, index=args.index)
    else:
        with connect(args, timeout_s=30.0) as client:
            bundle = client.prove(record_id=args.record_id, index=args.index)
    text = bundle.to_json()
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote proof of entry {bundle.index} to {args.output}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


_NO_POLICY_HINT = " (write one with: icx ledger trust --broker HOST:PORT -o FILE)"


def _policy(args: argparse.Namespace) -> TrustPolicy:
    from ledger import TrustPolicy

    if args.policy:
        return TrustPolicy.from_json(read_input(args.policy, "trust policy", _NO_POLICY_HINT))
    if args.db:
        default = Path(f"{args.db}.policy.json")
        if default.exists():
            return TrustPolicy.from_json(default.read_text())
    raise InvalidArgument(f"give --policy FILE (the log key, witnesses, quorum){_NO_POLICY_HINT}")


@command
def cmd_verify(args: argparse.Namespace) -> int:
    from ledger import ProofBundle, verify_bundle, verify_checkpoint

    if (args.bundle is None) == (args.db is None):
        raise InvalidArgument("give a BUNDLE file or --db PATH")
    if args.bundle is not None:
        text = read_input(args.bundle, "proof bundle", " (write one with: icx ledger prove)")
        policy = _policy(args)
        verified = verify_bundle(ProofBundle.from_json(text), policy)
        cp = verified.checkpoint
        result = {
            "ok": True,
            "index": verified.index,
            "checkpoint": {"origin": cp.origin, "size": cp.size, "root": cp.root.hex()},
            "entry": verified.entry,
        }
        if args.json:
            print_json(result)
        else:
            print(f"ok: entry {verified.index} is in {cp.origin} at size {cp.size}")
        return EXIT_OK
    policy = _policy(args)
    log = _open(args)
    checkpoint = verify_checkpoint(log.latest_note(), policy)
    report = log.audit()
    if report.size < checkpoint.size or log.store.root_at(checkpoint.size) != checkpoint.root:
        return _audit_failed("the latest checkpoint does not match the entries")
    if args.json:
        print_json({"ok": True, "db": args.db, "size": checkpoint.size})
    else:
        print(f"ok: {args.db} verifies under the policy at size {checkpoint.size}")
    return EXIT_OK


def _audit_failed(message: str) -> int:
    print(f"icx: error: audit failed: {message}", file=sys.stderr)
    return EXIT_FAILED


def _root(path_text: str) -> x509.Certificate:
    """The federation's root certificate from a PEM file holding just that one."""
    from identity.certs import load_certificates

    text = read_input(path_text, "federation root certificate")
    certs = load_certificates(text.encode(), f"federation root certificate {path_text}")
    if len(certs) != 1:
        raise InvalidArgument(
            f"federation root certificate {path_text} must hold one certificate, found {len(certs)}"
        )
    return certs[0]


@command
def cmd_audit(args: argparse.Namespace) -> int:
    from ledger import AuditError
    from ledger.log import UsageRuleViolation

    root = _root(args.root) if args.root else None
    log = _open(args)
    try:
        report = log.audit(root=root)
    except AuditError as exc:
        if args.json:
            # `rule` names the usage rule broken (docs/ledger.md), null for any other failure.
            rule = str(exc.rule) if isinstance(exc, UsageRuleViolation) else None
            print_json(
                {"ok": False, "first_bad_index": exc.index, "rule": rule, "reason": str(exc)}
            )
        return _audit_failed(str(exc))
    result = {
        "ok": True,
        "size": report.size,
        "root": report.root.hex(),
        "records": report.records,
        "key_events": report.key_events,
        "checkpoints": report.checkpoints,
        "statements": report.statements,
    }
    if args.json:
        print_json(result)
    else:
        print(
            f"ok: {report.size} entries ({report.records} records, {report.key_events} key "
            f"events), {report.checkpoints} checkpoints, {report.statements} statements; "
            f"root {report.root.hex()}"
            + ("; key admissions certified by the federation root" if root else "")
        )
    return EXIT_OK


# ------------------------------------------------------------------ settle

CSV_HEADERS = (
    "kind", "party", "counterparty", "currency", "paid_minor", "received_minor", "net_minor",
    "amount_minor", "energy_wh", "carbon_g",
)  # fmt: skip


@command
def cmd_settle(args: argparse.Namespace) -> int:
    """Net positions and transfers for a period: from the ledger file (signing the
    statement) or, by default, from the broker's signed statement, checked against its
    log key."""
    if args.db:
        log = _open(args, signing=True)
        # A federated broker's statement also carries its region flows, as its broker's.
        settlement, _ = log.settle(args.period, args.currency, home=_broker_of(log.origin))
        body: dict[str, Any] = dict(settlement.to_json())
        signed_by = f"checkpoint {settlement.checkpoint.origin} size {settlement.checkpoint.size}"
    else:
        from ledger import verify_statement

        with connect(args, timeout_s=60.0) as client:
            key = client.log_key()
            statement = client.statement(args.period)
        body = dict(verify_statement(statement, key))
        if args.out:
            Path(args.out).write_bytes(statement)
        signed_by = f"statement signed by {key.key_id}"
    if args.json:
        print_json(body)
        return EXIT_OK
    currency = str(body["currency"])
    parties = [p for p in body["parties"] if isinstance(p, dict)]
    transfers = [t for t in body["transfers"] if isinstance(t, dict)]
    # A federated broker's: what this region owes others for the records it accepted.
    flows = [f for f in body.get("regions", ()) if isinstance(f, dict)]
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_HEADERS)
        for p in parties:
            writer.writerow(
                ("position", p["party"], "", currency, p["paid_minor"], p["received_minor"],
                 p["net_minor"], "", p["energy_wh"], p["carbon_g"])
            )  # fmt: skip
        for t in transfers:
            writer.writerow(
                ("transfer", t["payer"], t["payee"], currency, "", "", "", t["amount_minor"],
                 "", "")
            )  # fmt: skip
        for f in flows:
            writer.writerow(
                ("region", f["payer"], f["payee"], currency, "", "", "", f["amount_minor"],
                 "", "")
            )  # fmt: skip
        return EXIT_OK
    print(f"period {args.period} ({body['records']} records), {signed_by}")
    print(f"amounts in {currency}, major units")
    if parties:
        _print_positions(currency, parties, transfers)
    else:
        print("no usage at this broker's own centers in the period")
    if flows:
        print()
        print("between regions: owed for the records of other regions accepted for tenants here")
        print_table(
            ("PAYER REGION", "PAYEE REGION", f"AMOUNT {currency}", "RECORDS"),
            [(f["payer"], f["payee"], _money(f["amount_minor"]), len(f["entries"])) for f in flows],
        )
    return EXIT_OK


def _print_positions(
    currency: str, parties: list[dict[str, Any]], transfers: list[dict[str, Any]]
) -> None:
    print_table(
        ("PARTY", f"PAID {currency}", f"RECEIVED {currency}", f"NET {currency}", "ENERGY KWH",
         "CARBON KG"),
        [
            (p["party"], _money(p["paid_minor"]), _money(p["received_minor"]),
             _money(p["net_minor"]), _kilo(p["energy_wh"]), _kilo(p["carbon_g"]))
            for p in parties
        ],
    )  # fmt: skip
    print()
    print_table(
        ("PAYER", "PAYEE", f"AMOUNT {currency}"),
        [(t["payer"], t["payee"], _money(t["amount_minor"])) for t in transfers],
    )


def _money(amount_minor: object) -> str:
    assert isinstance(amount_minor, int)
    return format_major(amount_minor)


def _kilo(amount: object) -> str:
    assert isinstance(amount, int)
    return f"{amount / 1000:,.1f}"


# ------------------------------------------------------------------ federation


def _region_arg(text: str) -> tuple[str, Path]:
    """`[BROKER=]LEDGER_FILE`: the broker's name ("" when left out) and the file."""
    name, sep, path = text.partition("=")
    if not sep:
        return "", Path(text)
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected [BROKER=]LEDGER_FILE, got {text!r}")
    return name, Path(path)


def _region_party(name: str, path: Path, origin: str) -> str:
    """The region's party: the broker a federated log is named after, which a given
    `name` must match; `name` for a log with another origin, which then needs one."""
    broker = _broker_of(origin)
    if not broker:
        if name:
            return name
        raise InvalidArgument(
            f"{path} is the log {origin}, not a federated broker's ({_FEDERATED}<name>): "
            f"name its region, --region NAME={path}"
        )
    if name and name != broker:
        raise InvalidArgument(
            f"{path} is the log of {broker} ({origin}), not {name}: "
            f"give --region {broker}={path} or just --region {path}"
        )
    return broker


def _check_complete(regions: list[tuple[Path, RegionLog]]) -> None:
    """Refuse a view that leaves out a log whose records a given one accepted, naming
    the first such entry and the ledger to add."""
    given = {region.origin for _, region in regions}
    for path, region in regions:
        for index, item in region.accepted:
            if item.origin not in given:
                raise InvalidArgument(
                    f"{path} ({region.party}) entry {index} accepts {item.accepted_id}, but "
                    f"log {item.origin} is not given: add {item.owner}'s ledger file "
                    f"(--region {item.owner}=LEDGER_FILE, or just --region LEDGER_FILE)"
                )


@command
def cmd_federation(args: argparse.Namespace) -> int:
    """Settle a period across regions, from each region broker's ledger file. Each file
    is checked to be a ledger read-only first; the ledger then only reads it."""
    from ledger import LedgerStore, Log
    from ledger.settlement import federation_view

    stores: list[LedgerStore] = []
    try:
        regions: list[tuple[Path, RegionLog]] = []
        for name, path in args.region:
            _check_ledger_file(path)
            stores.append(store := LedgerStore(path))
            if store.latest_checkpoint() is None:
                raise InvalidArgument(f"{path} has no checkpoint yet: nothing in it is settled")
            log = Log(store)
            regions.append((path, log.region(_region_party(name, path, log.origin))))
        _check_complete(regions)
        view = federation_view(
            [region for _, region in regions], period=args.period, currency=args.currency
        )
    finally:
        for store in stores:
            store.close()
    flows = [
        {
            "payer": payer,
            "payee": payee,
            "amount_minor": amount,
            "entries": [
                {"index": r.index, "origin": r.origin, "owner_index": r.owner_index}
                for r in view.statements[payer].region_entries[(payer, payee)]
            ],
        }
        for (payer, payee), amount in sorted(view.regions.items())
    ]
    body: dict[str, Any] = {
        "period": view.period,
        "currency": view.currency,
        "regions": {p: s.checkpoint.origin for p, s in sorted(view.statements.items())},
        "positions": dict(sorted(view.positions.items())),
        "region_positions": dict(sorted(view.region_positions.items())),
        "region_flows": flows,
        "accepted_checked": view.accepted,
    }
    if args.json:
        print_json(body)
        return EXIT_OK
    cur = view.currency
    print(f"federation {view.period}: {len(view.statements)} regions, {view.accepted} accepted "
          "records checked against their owners' logs")  # fmt: skip
    print_table(
        ("REGION", "LOG", "CHECKPOINT SIZE", f"REGION NET {cur}"),
        [
            (p, s.checkpoint.origin, s.checkpoint.size, _money(view.region_positions.get(p, 0)))
            for p, s in sorted(view.statements.items())
        ],
    )
    print()
    rows = []
    for (payer, payee), amount in sorted(view.regions.items()):
        refs = view.statements[payer].region_entries[(payer, payee)]
        shown = ", ".join(f"{r.index}->{r.origin}#{r.owner_index}" for r in refs[:3])
        rows.append((payer, payee, _money(amount), len(refs), shown + (" ..." * (len(refs) > 3))))
    print_table(
        ("PAYER REGION", "PAYEE REGION", f"AMOUNT {cur}", "RECORDS", "ENTRIES (HERE->OWNER)"),
        rows,
    )
    print()
    print_table(
        ("PARTY", f"NET {cur}"),
        [(p, _money(n)) for p, n in sorted(view.positions.items())],
    )
    total = sum(view.positions.values()) + sum(view.region_positions.values())
    print(f"\npositions sum to {_money(total)} {cur} (tenants and centers, regions)")
    return EXIT_OK


# ------------------------------------------------------------------ register


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ledger = sub.add_parser("ledger", help="the signed usage ledger: keys, proofs, audit")
    lsub = ledger.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND", required=True)

    p = lsub.add_parser("sample", help="fill a new ledger with synthetic, really signed usage")
    _db_args(p)
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--centers", type=int, default=5)
    p.add_argument("--tenants", type=int, default=20)
    p.add_argument("--batch", type=int, default=1, help="records per producer signature")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--period", default="2026-11", help="month the usage falls in (YYYY-MM)")
    p.add_argument("--origin", default=_DEFAULT_ORIGIN, help="the log's origin and key name")
    _json_flag(p)
    p.set_defaults(func=cmd_sample)

    p = lsub.add_parser("key", help="print the log's verifier key (signed-note vkey format)")
    _db_args(p, remote=True)
    _json_flag(p)
    p.set_defaults(func=cmd_key)

    p = lsub.add_parser("checkpoint", help="print the latest checkpoint as a signed note")
    _db_args(p, remote=True)
    p.add_argument("--new", action="store_true", help="with --db: sign a checkpoint of the tree")
    _json_flag(p, "print origin, size, root and the note as JSON")
    p.set_defaults(func=cmd_checkpoint)

    p = lsub.add_parser(
        "trust",
        help="write a trust policy (the log key, witnesses, quorum) for `verify`",
        description="Write the trust policy that `icx ledger verify --policy FILE` checks "
        "against: the log's verifier key as the broker (or the ledger file) names it, the "
        "witnesses' cosignature keys and how many of them must cosign. Compare the log key "
        "with the one the broker's operator publishes before relying on it.",
    )
    _db_args(p, remote=True)
    p.add_argument(
        "--witness",
        action="append",
        metavar="VKEY",
        help="a witness's cosignature/v1 verifier key (repeatable)",
    )
    p.add_argument("--quorum", type=int, help="cosignatures required (default: every witness)")
    p.add_argument("-o", "--output", help="write the policy here (default: standard output)")
    _json_flag(p, "the policy is JSON (the default)")
    p.set_defaults(func=cmd_trust)

    p = lsub.add_parser("prove", help="write a self-contained proof bundle for one entry")
    _db_args(p, remote=True)
    p.add_argument("record_id", nargs="?", metavar="RECORD_ID")
    p.add_argument("--index", type=int)
    _json_flag(p, "the bundle is JSON (the default)")
    p.add_argument("-o", "--output", help="write the bundle to this file")
    p.set_defaults(func=cmd_prove)

    p = lsub.add_parser("verify", help="verify a proof bundle offline, or a whole ledger file")
    p.add_argument("bundle", nargs="?", metavar="BUNDLE")
    p.add_argument("--db", help="verify this ledger file instead of a bundle")
    p.add_argument("--key", help=argparse.SUPPRESS)
    p.add_argument(
        "--policy",
        help="trust policy JSON, from `icx ledger trust` (default with --db: DB.policy.json)",
    )
    _json_flag(p)
    p.set_defaults(func=cmd_verify)

    p = lsub.add_parser("audit", help="replay the whole ledger; name the first bad entry")
    _db_args(p)
    p.add_argument(
        "--root",
        metavar="FILE",
        help="the federation's root certificate (PEM): every key admission but the log's "
        "own must carry a membership certificate it issued for that party and key",
    )
    _json_flag(p)
    p.set_defaults(func=cmd_audit)

    witness_cmd.register(lsub)

    p = sub.add_parser(
        "settle",
        help="settle a period: net positions and transfers",
        description="Settle a month: each party's paid, received and net amounts and the "
        "transfers that clear them, from the broker's signed statement (default) or a "
        "ledger file (--db). Tables print major units of the named currency; --json and "
        "--csv keep integer minor units (*_minor) with the currency beside them. A "
        "federated broker's statement also shows what its region owes the other regions "
        "for the records it accepted for its tenants (between regions).",
    )
    _db_args(p, remote=True)
    p.add_argument("--out", help="from a broker: keep the signed statement in this file")
    p.add_argument("--period", required=True, help="YYYY-MM")
    p.add_argument("--currency", default="CNY", help="with --db: the statement's currency")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument(
        "--csv",
        action="store_true",
        help="positions, transfers and region flows, one table (kind: position, transfer, region)",
    )
    p.set_defaults(func=cmd_settle)

    p = lsub.add_parser(
        "federation",
        help="settle a period across regions from every region broker's ledger",
        description="Settle a period across the federation from each region broker's ledger "
        "file: tenant-center positions from every log's own records, region-region flows "
        "from the records each region accepted for its tenants, every accepted record "
        "checked against the entry in its owner's log (refused, naming both entries, if "
        "they differ). Both sets of positions sum to zero.",
        epilog="Copying a running broker's ledger: it is SQLite in WAL mode, its latest "
        "entries possibly only in LEDGER_FILE-wal, so a plain copy of the file (cp, scp) "
        'can miss them or be torn. Copy with `sqlite3 LEDGER_FILE ".backup COPY"` (a '
        "consistent snapshot, safe while the broker writes), or name the live file: this "
        "command only reads the files it is given.",
    )
    p.add_argument(
        "--region",
        action="append",
        required=True,
        type=_region_arg,
        metavar="[BROKER=]LEDGER_FILE",
        help="a region broker's ledger file (DB.ledger, beside its database), optionally "
        "with the broker's name, which its log's origin icx/BROKER gives anyway; repeat "
        "for every region",
    )
    p.add_argument("--period", required=True, help="YYYY-MM")
    p.add_argument("--currency", default="CNY")
    _json_flag(p)
    p.set_defaults(func=cmd_federation)
