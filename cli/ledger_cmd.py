"""`icx ledger ...` and `icx settle`: the ledger's tools, offline on a database file.

Each command opens the ledger file (`--db PATH`) and calls `ledger` directly; nothing
here reaches the network. The log's signer key lives beside the file in `PATH.key`
(written by `sample`, mode 0600) and is needed only by what signs: a new checkpoint and
a settlement statement.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

from cli import witness_cmd
from cli._output import EXIT_FAILED, EXIT_OK, command, print_json, print_table
from core.errors import InvalidArgument, NotFound
from ledger import (
    AuditError,
    LedgerStore,
    Log,
    ProofBundle,
    SignerKey,
    TrustPolicy,
    verify_bundle,
    verify_checkpoint,
)
from ledger import sample as ledger_sample
from ledger.settlement import period_bounds

_DEFAULT_ORIGIN = "icx.local/ledger"


def _key_path(args: argparse.Namespace) -> Path:
    return Path(args.key) if args.key else Path(f"{args.db}.key")


def _open(args: argparse.Namespace, *, signing: bool = False) -> Log:
    path = Path(args.db)
    if not path.exists():
        raise NotFound(f"no ledger file at {path}")
    signer = None
    key_path = _key_path(args)
    if signing:
        if not key_path.exists():
            raise NotFound(f"no signer key at {key_path}; this command signs")
        signer = SignerKey.parse(key_path.read_text())
    return Log(LedgerStore(path), signer)


def _db_args(p: argparse.ArgumentParser, *, remote: bool = False) -> None:
    if remote:
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--db", help="the ledger database file")
        where.add_argument("--broker", help="ask this broker (HOST:PORT) over gRPC instead")
    else:
        p.add_argument("--db", required=True, help="the ledger database file")
    p.add_argument("--key", help="the log's signer key file (default: DB.key)")


def _ledger_stub(args: argparse.Namespace) -> Any:
    """A LedgerService stub on the broker named by --broker (the caller closes nothing:
    the channel lives as long as the command)."""
    import grpc

    from icx.v1 import ledger_pb2_grpc

    return ledger_pb2_grpc.LedgerServiceStub(grpc.insecure_channel(args.broker))


# ------------------------------------------------------------------ sample


@command
def cmd_sample(args: argparse.Namespace) -> int:
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
        policy = TrustPolicy(log=signer.verifier)
        Path(f"{path}.policy.json").write_text(policy.to_json())
    finally:
        store.close()
    print(f"{path}: {args.records} records from {args.centers} centers, checkpoint at {log.size}")
    print(f"signer key {key_path}, trust policy {path}.policy.json")
    return EXIT_OK


# ------------------------------------------------------------------ key, checkpoint


@command
def cmd_key(args: argparse.Namespace) -> int:
    if getattr(args, "broker", None):
        from icx.v1 import ledger_pb2

        reply = _ledger_stub(args).GetLogKey(ledger_pb2.GetLogKeyRequest(), timeout=30)
        print(reply.key)
        return EXIT_OK
    log = _open(args)
    print(log.log_key.text())
    return EXIT_OK


@command
def cmd_checkpoint(args: argparse.Namespace) -> int:
    if getattr(args, "broker", None):
        from icx.v1 import ledger_pb2

        reply = _ledger_stub(args).GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=30)
        sys.stdout.write(reply.note)
        return EXIT_OK
    log = _open(args, signing=args.new)
    if args.new:
        log.checkpoint()
    sys.stdout.write(log.latest_note())
    return EXIT_OK


# ------------------------------------------------------------------ prove, verify, audit


@command
def cmd_prove(args: argparse.Namespace) -> int:
    if (args.record_id is None) == (args.index is None):
        raise InvalidArgument("give a RECORD_ID or --index N")
    if getattr(args, "broker", None):
        from icx.v1 import ledger_pb2

        request = (
            ledger_pb2.ProveRecordRequest(record_id=args.record_id)
            if args.record_id is not None
            else ledger_pb2.ProveRecordRequest(index=args.index)
        )
        text = _ledger_stub(args).ProveRecord(request, timeout=30).bundle_json
        bundle = ProofBundle.from_json(text)
    else:
        bundle = _open(args).prove(record_id=args.record_id, index=args.index)
        text = bundle.to_json()
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote proof of entry {bundle.index} to {args.output}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _policy(args: argparse.Namespace) -> TrustPolicy:
    if args.policy:
        return TrustPolicy.from_json(Path(args.policy).read_text())
    if args.db:
        default = Path(f"{args.db}.policy.json")
        if default.exists():
            return TrustPolicy.from_json(default.read_text())
    raise InvalidArgument("give --policy FILE (the trust policy: log key, witnesses, quorum)")


@command
def cmd_verify(args: argparse.Namespace) -> int:
    if (args.bundle is None) == (args.db is None):
        raise InvalidArgument("give a BUNDLE file or --db PATH")
    policy = _policy(args)
    if args.bundle is not None:
        verified = verify_bundle(ProofBundle.from_json(Path(args.bundle).read_text()), policy)
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
    log = _open(args)
    checkpoint = verify_checkpoint(log.latest_note(), policy)
    report = log.audit()
    if report.size < checkpoint.size or log.store.root_at(checkpoint.size) != checkpoint.root:
        return _audit_failed("the latest checkpoint does not match the entries")
    print(f"ok: {args.db} verifies under the policy at size {checkpoint.size}")
    return EXIT_OK


def _audit_failed(message: str) -> int:
    print(f"icx: error: audit failed: {message}", file=sys.stderr)
    return EXIT_FAILED


@command
def cmd_audit(args: argparse.Namespace) -> int:
    log = _open(args)
    try:
        report = log.audit()
    except AuditError as exc:
        if args.json:
            print_json({"ok": False, "first_bad_index": exc.index, "reason": str(exc)})
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
        )
    return EXIT_OK


# ------------------------------------------------------------------ settle


@command
def cmd_settle(args: argparse.Namespace) -> int:
    if getattr(args, "broker", None):
        return _settle_remote(args)
    log = _open(args, signing=True)
    settlement, _ = log.settle(args.period, args.currency)
    body = settlement.to_json()
    if args.json:
        print_json(body)
        return EXIT_OK
    rows = [
        (t.party, t.paid_minor, t.received_minor, t.net_minor, t.energy_wh, t.carbon_g)
        for _, t in sorted(settlement.totals.items())
    ]
    headers = ("party", "paid_minor", "received_minor", "net_minor", "energy_wh", "carbon_g")
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(rows)
        return EXIT_OK
    cp = settlement.checkpoint
    print(
        f"period {args.period} ({settlement.records} records), "
        f"checkpoint {cp.origin} size {cp.size}"
    )
    print_table(headers, rows)
    print()
    print_table(
        ("payer", "payee", "amount_minor"),
        [(t.payer, t.payee, t.amount_minor) for t in settlement.transfers],
    )
    return EXIT_OK


def _settle_remote(args: argparse.Namespace) -> int:
    """The broker's signed statement for the period, checked against its log key."""
    from icx.v1 import ledger_pb2
    from ledger import VerifierKey, verify_statement

    stub = _ledger_stub(args)
    key = VerifierKey.parse(stub.GetLogKey(ledger_pb2.GetLogKeyRequest(), timeout=30).key)
    reply = stub.GetStatement(ledger_pb2.GetStatementRequest(period=args.period), timeout=60)
    body = verify_statement(reply.statement, key)
    if args.out:
        Path(args.out).write_bytes(reply.statement)
    if args.json:
        print_json(body)
        return EXIT_OK
    parties = body.get("parties")
    transfers = body.get("transfers")
    assert isinstance(parties, list) and isinstance(transfers, list)
    headers = ("party", "paid_minor", "received_minor", "net_minor", "energy_wh", "carbon_g")
    rows = [tuple(p[h] for h in headers) for p in parties if isinstance(p, dict)]
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(rows)
        return EXIT_OK
    print(f"period {args.period}, statement signed by {key.key_id}")
    print_table(headers, rows)
    print()
    print_table(
        ("payer", "payee", "amount_minor"),
        [(t["payer"], t["payee"], t["amount_minor"]) for t in transfers if isinstance(t, dict)],
    )
    return EXIT_OK


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
    p.set_defaults(func=cmd_sample)

    p = lsub.add_parser("key", help="print the log's verifier key (signed-note vkey format)")
    _db_args(p, remote=True)
    p.set_defaults(func=cmd_key)

    p = lsub.add_parser("checkpoint", help="print the latest checkpoint as a signed note")
    _db_args(p, remote=True)
    p.add_argument("--new", action="store_true", help="sign a checkpoint of the current tree")
    p.set_defaults(func=cmd_checkpoint)

    p = lsub.add_parser("prove", help="write a self-contained proof bundle for one entry")
    _db_args(p, remote=True)
    p.add_argument("record_id", nargs="?", metavar="RECORD_ID")
    p.add_argument("--index", type=int)
    p.add_argument("--json", action="store_true", help="the bundle is JSON (the default)")
    p.add_argument("-o", "--output", help="write the bundle to this file")
    p.set_defaults(func=cmd_prove)

    p = lsub.add_parser("verify", help="verify a proof bundle offline, or a whole ledger file")
    p.add_argument("bundle", nargs="?", metavar="BUNDLE")
    p.add_argument("--db", help="verify this ledger file instead of a bundle")
    p.add_argument("--key", help=argparse.SUPPRESS)
    p.add_argument("--policy", help="trust policy JSON (default with --db: DB.policy.json)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = lsub.add_parser("audit", help="replay the whole ledger; name the first bad entry")
    _db_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    witness_cmd.register(lsub)

    p = sub.add_parser("settle", help="settle a period: net positions and transfers")
    _db_args(p, remote=True)
    p.add_argument("--out", help="with --broker: keep the signed statement in this file")
    p.add_argument("--period", required=True, help="YYYY-MM")
    p.add_argument("--currency", default="CNY")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", action="store_true")
    p.set_defaults(func=cmd_settle)
