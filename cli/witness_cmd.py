"""`icx ledger witness ...`: cosign a broker's checkpoints as an independent witness (the
coordinator's auditor, another broker, a center), only after checking that each new
checkpoint extends the last one this witness cosigned.

    icx ledger witness init --name auditor.gov --key auditor.key    # prints the vkey
    icx broker serve ... --witness <that vkey>
    icx ledger witness cosign --broker HOST:PORT --key auditor.key --state auditor.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from cli._client import add_broker_flag, connect
from cli._output import EXIT_OK, command, print_json
from core.errors import InvalidArgument


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@command
def witness_init(args: argparse.Namespace) -> int:
    from ledger import ALG_COSIGNATURE_V1, SignerKey

    path = Path(args.key)
    if path.exists():
        raise InvalidArgument(f"{path} already exists; a witness keeps its key")
    key = SignerKey.generate(args.name, ALG_COSIGNATURE_V1)
    _write_private(path, key.text() + "\n")
    if args.json:
        print_json({"key_file": str(path), "verifier_key": key.verifier.text()})
    else:
        print(key.verifier.text())
    return EXIT_OK


@command
def witness_cosign(args: argparse.Namespace) -> int:
    from ledger import Checkpoint, SignerKey, VerifierKey, Witness
    from ledger.note import parse_note

    key = SignerKey.parse(Path(args.key).read_text())
    state_path = Path(args.state)
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
    with connect(args, timeout_s=30.0) as client:
        log_key_text = state.get("log_key") or args.log_key
        # First contact: trust the key the broker names, and keep it.
        log_key = VerifierKey.parse(log_key_text) if log_key_text else client.log_key()
        note = client.checkpoint()
        new = Checkpoint.from_text(parse_note(note).text)
        witness = Witness(key=key, logs={new.origin: log_key})
        proof: list[bytes] = []
        if state.get("note"):
            old_note = str(state["note"])
            old = Checkpoint.from_text(parse_note(old_note).text)
            witness.latest[old.origin] = (old, old_note)
            if old.size < new.size:
                proof = client.consistency_proof(old.size, new.size)
        # Raises (and cosigns nothing) on a bad signature, a fork or a shrinking log.
        cosigned = witness.cosign(note, proof, int(time.time()))
        kept = client.add_cosignature(cosigned)
    state = {"log_key": log_key.text(), "note": note}
    tmp = state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(state_path)
    result = {"origin": new.origin, "size": new.size, "kept": kept}
    if args.json:
        print_json(result)
    else:
        print(f"cosigned {new.origin} at size {new.size}")
    return EXIT_OK


def register(lsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    w = lsub.add_parser("witness", help="cosign a broker's checkpoints as a witness")
    wsub = w.add_subparsers(dest="witness_command", metavar="COMMAND", required=True)
    p = wsub.add_parser("init", help="make a witness key; prints its verifier key")
    p.add_argument("--name", required=True, help="the witness's name (no spaces or '+')")
    p.add_argument("--key", required=True, help="write the private key here (mode 0600)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=witness_init)

    p = wsub.add_parser(
        "cosign",
        help="check the broker's latest checkpoint against the last one cosigned, cosign it",
    )
    add_broker_flag(p)
    p.add_argument("--key", required=True, help="the witness's private key file")
    p.add_argument("--state", required=True, help="JSON file: the log key and last cosigned note")
    p.add_argument("--log-key", help="the log's verifier key (default: kept in --state)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=witness_cosign)
