"""Brokers witness each other's ledgers (C2SP tlog-witness semantics).

Each broker gossips its latest checkpoint on its own topic, with its log key and its
witness (cosignature/v1) key, in an envelope signed by its membership key: the keys are
bound to the admitted broker, not taken on first contact from whoever answers. A peer's
new checkpoint is cosigned only after a consistency proof from the last checkpoint this
broker cosigned for that log (fetched from the log's broker), and the cosignature is
sent back there (LedgerService.AddCosignature), where it is kept because the cosigner's
key came the same way.

A federated broker's log is named after it (`icx/<broker>`): an announcement of another
log is dropped. An older checkpoint than the one cosigned is ignored (a lagging relay).
Two different roots for one origin and size, a larger checkpoint that does not extend
the last one cosigned, or a log key that changes: an equivocation alarm. It is logged, counted
(`icx_equivocations`), its evidence (both signed notes) is stored in a file, and the log's
broker is no longer trusted: its pools leave matching, nothing more is forwarded there,
its checkpoints are no longer cosigned.

What was cosigned is kept in a state file, so that a restarted witness still refuses a
fork of what it cosigned before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from broker.ledger import BrokerLedger
from broker.metrics import Metrics
from broker.peers import Peers
from icx.v1 import ledger_pb2, ledger_pb2_grpc
from identity.files import write_private
from ledger import ALG_COSIGNATURE_V1, Checkpoint, SignerKey, VerifierKey, Witness
from ledger.errors import EquivocationError, LedgerError, VerificationError
from ledger.note import parse_note

log = logging.getLogger("icx.broker.witness")

PAYLOAD_FORMAT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class LogAnnouncement:
    """A broker's ledger as it gossips it."""

    origin: str
    log_key: str
    witness_key: str
    note: str


def log_origin(broker: str) -> str:
    """The origin of a federated broker's log: named after the broker, so that the log
    and its keys are bound to the membership that announces them."""
    return f"icx/{broker}"


def announcement(origin: str, log_key: str, witness_key: str, note: str) -> bytes:
    body = {
        "v": PAYLOAD_FORMAT,
        "origin": origin,
        "log_key": log_key,
        "witness_key": witness_key,
        "note": note,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def parse_announcement(payload: bytes) -> LogAnnouncement:
    body = json.loads(payload)
    if body.get("v") != PAYLOAD_FORMAT:
        raise ValueError(f"checkpoint payload format {body.get('v')!r}")
    return LogAnnouncement(
        origin=str(body["origin"]),
        log_key=str(body["log_key"]),
        witness_key=str(body["witness_key"]),
        note=str(body["note"]),
    )


def witness_key(path: Path, name: str) -> SignerKey:
    """This broker's witness key, kept at `path` (made on first use)."""
    if path.exists():
        return SignerKey.parse(path.read_text())
    key = SignerKey.generate(name, ALG_COSIGNATURE_V1)
    write_private(path, (key.text() + "\n").encode())
    return key


class Witnessing:
    """Cosigns the peers' checkpoints; raises the alarm on a fork."""

    def __init__(
        self,
        *,
        key: SignerKey,
        ledger: BrokerLedger,
        peers: Peers,
        metrics: Metrics,
        state_path: Path,
        evidence_dir: Path,
    ) -> None:
        self.key = key
        self.ledger = ledger
        self.peers = peers
        self.metrics = metrics
        self.state_path = state_path
        self.evidence_dir = evidence_dir
        self.witness = Witness(key=key, logs={})
        # broker -> (origin, log key text) as first announced
        self.logs: dict[str, tuple[str, str]] = {}
        # broker -> its witness key text as last announced (shown by ListPeers)
        self.witness_keys: dict[str, str] = {}
        self.cosigned = 0
        self._pending: dict[str, LogAnnouncement] = {}
        self._delivered: dict[str, int] = {}  # origin -> size whose cosignature its log kept
        self._working: dict[str, asyncio.Task[None]] = {}
        self._load()

    def log_key(self, broker: str) -> VerifierKey | None:
        """`broker`'s log key as its membership-signed gossip announced it."""
        known = self.logs.get(broker)
        return None if known is None else VerifierKey.parse(known[1])

    async def close(self) -> None:
        for task in list(self._working.values()):
            task.cancel()
        for task in list(self._working.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------ state

    def _load(self) -> None:
        if not self.state_path.exists():
            return
        state = json.loads(self.state_path.read_text())
        for broker, (origin, key_text) in state.get("logs", {}).items():
            self.logs[broker] = (origin, key_text)
            self.witness.logs[origin] = VerifierKey.parse(key_text)
        self.witness_keys.update(state.get("witness_keys", {}))
        for origin, note in state.get("latest", {}).items():
            self.witness.latest[origin] = (Checkpoint.from_text(parse_note(note).text), note)
        for broker, reason in state.get("distrusted", {}).items():
            self.peers.distrust(broker, reason)

    def _save(self) -> None:
        state = {
            "logs": {b: list(v) for b, v in self.logs.items()},
            "latest": {o: note for o, (_, note) in self.witness.latest.items()},
            "distrusted": dict(self.peers.distrusted),
            "witness_keys": dict(self.witness_keys),
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp.replace(self.state_path)

    # ------------------------------------------------------------ gossip in

    def heard(self, broker: str, payload: bytes) -> None:
        """A peer's newer announcement (already checked as signed by that broker)."""
        if broker in self.peers.distrusted:
            return
        try:
            said = parse_announcement(payload)
            VerifierKey.parse(said.log_key)
            witness = VerifierKey.parse(said.witness_key)
        except (ValueError, KeyError, TypeError, LedgerError) as exc:
            log.warning("peer %s: checkpoint announcement dropped: %s", broker, exc)
            return
        if said.origin != log_origin(broker):
            # A broker's log is named after it: another name would let one broker speak
            # for another's log (and have it blamed for the mismatch).
            log.warning(
                "peer %s: checkpoint announcement for log %s dropped: its log is %s",
                broker,
                said.origin,
                log_origin(broker),
            )
            return
        known = self.logs.get(broker)
        if known is not None and known != (said.origin, said.log_key):
            self._alarm(
                broker,
                f"changed its log from {known[0]} ({known[1][:40]}...) to {said.origin}",
                note_a=self.witness.latest.get(known[0], (None, ""))[1],
                note_b=said.note,
            )
            return
        if known is None:
            self.logs[broker] = (said.origin, said.log_key)
            self.witness.logs[said.origin] = VerifierKey.parse(said.log_key)
            log.info("witnessing %s's log %s", broker, said.origin)
        self.ledger.accept_witness(witness)
        if self.witness_keys.get(broker) != witness.text():
            self.witness_keys[broker] = witness.text()
            self._save()
        self._pending[broker] = said
        if broker not in self._working:
            task = asyncio.create_task(self._work(broker), name=f"witness-{broker}")
            self._working[broker] = task
            task.add_done_callback(lambda _: self._working.pop(broker, None))

    async def _work(self, broker: str) -> None:
        while (said := self._pending.pop(broker, None)) is not None:
            try:
                await self._cosign(broker, said)
            except grpc.aio.AioRpcError as exc:
                log.info("cosigning %s's checkpoint: %s (next announcement)", broker, exc.details())
            except Exception:
                log.exception("cosigning %s's checkpoint failed", broker)

    async def _cosign(self, broker: str, said: LogAnnouncement) -> None:
        if broker in self.peers.distrusted:
            return
        new = Checkpoint.from_text(parse_note(said.note).text)
        previous = self.witness.latest.get(said.origin)
        if previous is not None and new.size < previous[0].size:
            self.metrics.checkpoints_ignored.inc()  # a lagging relay, a replay: no alarm
            return
        same = previous is not None and (previous[0].size, previous[0].root) == (new.size, new.root)
        if same and self._delivered.get(said.origin) == new.size:
            return  # cosigned, and the cosignature kept there
        channel = self.peers.channel(broker)
        if channel is None:
            return  # its address comes with its summary; the announcement is republished
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        proof: list[bytes] = []
        if previous is not None and 0 < previous[0].size < new.size:
            reply = await stub.GetConsistencyProof(
                ledger_pb2.GetConsistencyProofRequest(size1=previous[0].size, size2=new.size),
                timeout=5.0,
            )
            proof = list(reply.proof)
        try:
            cosigned = self.witness.cosign(said.note, proof, int(time.time()))
        except EquivocationError as exc:
            self._alarm(broker, str(exc), note_a=exc.note_a, note_b=exc.note_b)
            return
        except VerificationError as exc:
            if previous is None:
                log.warning("peer %s: checkpoint refused: %s", broker, exc)
                return
            self._alarm(
                broker,
                f"checkpoint {new.size} does not extend the cosigned {previous[0].size}: {exc}",
                note_a=previous[1],
                note_b=said.note,
            )
            return
        if not same:
            self._save()
            self.cosigned += 1
            self.metrics.cosigned.inc()
        await stub.AddCosignature(ledger_pb2.AddCosignatureRequest(note=cosigned), timeout=5.0)
        self._delivered[said.origin] = new.size

    def _alarm(self, broker: str, reason: str, *, note_a: str, note_b: str) -> None:
        origin = self.logs.get(broker, (broker, ""))[0]
        self.evidence_dir.mkdir(parents=True, exist_ok=True)
        at_ms = int(time.time() * 1000)
        path = self.evidence_dir / f"{_file_name(broker)}-{at_ms}.json"
        evidence = {
            "broker": broker,
            "origin": origin,
            "reason": reason,
            "at_ms": at_ms,
            "note_a": note_a,
            "note_b": note_b,
        }
        path.write_text(json.dumps(evidence, indent=1))
        self.metrics.equivocations.labels(origin=origin).inc()
        self.peers.distrust(broker, reason)
        self._save()
        log.error(
            "EQUIVOCATION by %s (log %s): %s; evidence in %s; %s is no longer trusted",
            broker,
            origin,
            reason,
            path,
            broker,
        )


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
