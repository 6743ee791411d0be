"""Usage flows from the centers into the broker's signed log: each finished job is a
record signed by its center and countersigned by the broker; anyone can prove and verify
it offline, and the settlement pays the centers."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker.ledger import ledger_paths
from cli.federation import LocalFederation
from core import wire
from core.states import JobState
from core.types import JobSpec
from icx.v1 import agent_pb2, broker_pb2_grpc, ledger_pb2, ledger_pb2_grpc
from identity import Credentials, Role
from ledger import SignedRecord, SignerKey, UsageRecord, sign_records, verify_statement
from ledger.keys import VerifierKey
from ledger.records import charge_minor
from tests.agent_stream import Respond, converse, no_answer, prove_with
from tests.conftest import FAST_BROKER, make_center, run_icx, wait_centers, wait_for

TENANT = "lab-a"


@pytest.fixture
def insecure(tmp_path: Path) -> Iterator[LocalFederation]:
    """A development broker (--insecure): a center declares its usage key in its Hello
    and proves it with the Challenge; the first key seen for an id is the one kept."""
    with LocalFederation(root=tmp_path / "dev", broker_args=FAST_BROKER, secure=False) as fed:
        yield fed


def _user_folder(federation: LocalFederation, tenant: str = TENANT) -> Path:
    """The member folder of `tenant`'s user (the one `federation.client(tenant)` uses)."""
    return federation.member(f"{tenant}.user", Role.USER, tenant=tenant)


def _coordinator_folder(federation: LocalFederation) -> Path:
    return federation.authority.folder / "coordinator"


def _submit_as(
    federation: LocalFederation, tenant: str, seconds: float, gate: Path | None = None
) -> str:
    """A job of `seconds`, or (with `gate`) one that runs until that file exists."""
    command = ("sleep", str(seconds))
    if gate is not None:
        command = ("sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    spec = JobSpec(accelerator="any", devices=2, estimated_s=60, command=command)
    with federation.client(tenant) as user:
        return user.submit(spec).job_id


@pytest.fixture
def ran(
    federation: LocalFederation, stub: broker_pb2_grpc.BrokerServiceStub
) -> Iterator[tuple[LocalFederation, list[str], ledger_pb2_grpc.LedgerServiceStub]]:
    """Six jobs of TENANT run and billed; the ledger as the coordinator reads it (the
    whole statement: every party's position)."""
    # Dear pools, so that one-second jobs still cost whole fen.
    for c in (
        make_center("CA", pools={"p": ("ascend-910", 8, 20_000)}),
        make_center("CB", pools={"p": ("ascend-910", 8, 24_000)}),
    ):
        federation.start_agent(c)
    wait_centers(stub, 2)
    ids = [_submit_as(federation, TENANT, 1.2) for _ in range(6)]

    with federation.client(TENANT) as user:

        def done() -> bool:
            return all(user.get_job(i).state == JobState.SUCCEEDED for i in ids)

        wait_for(done, 30, "six jobs")
    with federation.channel(Role.COORDINATOR) as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        # 2 key admissions (broker, then each center) + 6 usage records, once acknowledged.
        wait_for(lambda: _size(ledger) >= 9, 20, "the usage records in the log")
        yield federation, ids, ledger


def _size(ledger: ledger_pb2_grpc.LedgerServiceStub) -> int:
    note = ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=10).note
    return int(note.splitlines()[1])


def test_each_job_is_one_signed_record_that_verifies_offline(
    ran: tuple[LocalFederation, list[str], ledger_pb2_grpc.LedgerServiceStub], tmp_path: Path
) -> None:
    federation, ids, ledger = ran
    key = ledger.GetLogKey(ledger_pb2.GetLogKeyRequest(), timeout=10).key
    # Anyone can prove and verify: here the tenant's user (named in its records).
    user = _user_folder(federation)
    assert (
        key
        == run_icx("ledger", "key", "--broker", federation.address, identity=user).stdout.strip()
    )
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"log": key, "witnesses": [], "quorum": 0}))

    size = _size(ledger)
    seen: dict[str, SignedRecord] = {}
    for index in range(size):
        bundle = tmp_path / f"{index}.json"
        proved = run_icx("ledger", "prove", "--index", str(index), "--broker", federation.address,
                     "-o", str(bundle), identity=user)  # fmt: skip
        assert proved.returncode == 0, proved.stderr
        verified = run_icx("ledger", "verify", str(bundle), "--policy", str(policy), "--json")
        assert verified.returncode == 0, verified.stderr
        entry = json.loads(verified.stdout)["entry"]
        if entry.get("type") == "usage":
            signed = SignedRecord.from_json(entry)
            seen[signed.record.job_id] = signed
    assert sorted(seen) == sorted(ids)  # every job exactly once
    for signed in seen.values():
        r = signed.record
        assert (r.consumer, r.devices, r.accelerator) == (TENANT, 2, "ascend-910")
        assert r.producer in {"CA", "CB"}
        assert r.wall_s >= 1 and r.device_s == 2 * r.wall_s
        assert r.charge_minor == charge_minor(r.device_s, r.unit_price_minor) > 0
        assert r.unit_price_minor == {"CA": 20_000, "CB": 24_000}[r.producer]
        assert signed.broker_sig  # countersigned on acceptance

    # A flipped byte in a bundle fails offline verification.
    bundle = json.loads((tmp_path / f"{size - 1}.json").read_text())
    leaf = bytearray(bundle["leaf"] if "leaf" in bundle else bundle["entry"], "ascii")
    leaf[10] ^= 1
    bundle["leaf" if "leaf" in bundle else "entry"] = leaf.decode("ascii", "replace")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bundle))
    assert run_icx("ledger", "verify", str(bad), "--policy", str(policy)).returncode != 0


def test_settlement_pays_the_centers_and_the_log_audits(
    ran: tuple[LocalFederation, list[str], ledger_pb2_grpc.LedgerServiceStub],
) -> None:
    federation, _, ledger = ran
    period = time.strftime("%Y-%m", time.gmtime())
    signed = ledger.GetStatement(ledger_pb2.GetStatementRequest(period=period), timeout=30)
    key = VerifierKey.parse(ledger.GetLogKey(ledger_pb2.GetLogKeyRequest(), timeout=10).key)
    body = verify_statement(signed.statement, key)
    net = {p["party"]: p["net_minor"] for p in body["parties"]}  # type: ignore[union-attr,index]
    assert sum(net.values()) == 0  # settlement sums to zero
    assert net[TENANT] < 0 < net["CA"] + net["CB"]
    assert -net[TENANT] == sum(m["amount_minor"] for m in body["matrix"])  # type: ignore[union-attr,index]
    cli = run_icx(
        "settle", "--broker", federation.address, "--period", period, "--json",
        identity=_coordinator_folder(federation),
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert {p["party"]: p["net_minor"] for p in json.loads(cli.stdout)["parties"]} == net
    federation.stop()  # the broker writes nothing more; audit its files offline
    db, _ = ledger_paths(federation.db)
    audit = run_icx("ledger", "audit", "--db", str(db))
    assert audit.returncode == 0, audit.stderr


def _acks(replies: list[agent_pb2.ConnectResponse]) -> int:
    return sum(1 for r in replies if r.HasField("usage_ack"))


def _ledger_entries(federation: LocalFederation) -> int:
    with sqlite3.connect(f"file:{federation.db}.ledger?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM entries").fetchone()[0])


def _bill_for_others(
    federation: LocalFederation,
    key: SignerKey,
    respond: Respond = no_answer,
    credentials: Credentials | None = None,
) -> list[agent_pb2.UsageAck]:
    """Center CZ (its usage key `key`) reports usage it has no right to: the acks."""
    job_id = _submit_as(federation, TENANT, 1)
    now = int(time.time() * 1000)

    def report(producer: str, consumer: str, signer: SignerKey) -> agent_pb2.ConnectRequest:
        record = UsageRecord(
            record_id=f"{producer}/c-1", producer=producer, consumer=consumer, job_id=job_id,
            start_ms=now - 2000, end_ms=now, wall_s=2, devices=1, device_s=2,
            accelerator="ascend-910", energy_wh=1, carbon_g=0, unit_price_minor=500,
            charge_minor=1,
        )  # fmt: skip
        entry = sign_records([record], signer)[0].entry()
        return agent_pb2.ConnectRequest(usage=agent_pb2.UsageReport(entry=entry))

    replies = converse(
        federation.address,
        _hello("CZ", key.verifier.text()),
        respond=respond,
        then=[
            report("CY", TENANT, key),  # another center's name
            report("CZ", "lab-b", key),  # a job CZ holds no claim for, for another tenant
            report("CZ", TENANT, SignerKey.generate("CZ")),  # ... and with a key not admitted
        ],
        until=lambda replies: _acks(replies) == 3,
        credentials=credentials,
    )
    acks = [r.usage_ack for r in replies if r.HasField("usage_ack")]
    assert [a.accepted for a in acks] == [False, False, False]
    assert acks[0].reason == "center CZ cannot report usage for CY"
    assert acks[1].reason == "center CZ holds no claim 'c-1'"
    assert acks[2].reason == "center CZ holds no claim 'c-1'"
    # (the records of a center that holds the claim: tests/test_usage_checks.py)
    return acks


def test_a_center_cannot_bill_for_another_or_change_its_key(federation: LocalFederation) -> None:
    # CZ presents its own certificate and signs with the key that certificate binds.
    _, key = federation.center_identity("CZ")
    cz = federation.credentials(Role.CENTER, "CZ")
    _bill_for_others(federation, key, credentials=cz)

    entries = _ledger_entries(federation)
    other = SignerKey.generate("CZ")
    code, details = converse_refused(
        federation, _hello("CZ", other.verifier.text()), credentials=cz
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details.startswith(
        "center CZ declares a usage key its certificate does not bind: a new key needs a new "
        "admission"
    )
    assert _ledger_entries(federation) == entries  # the certified key is still CZ's one


def test_in_development_mode_a_center_cannot_bill_for_another_or_change_its_key(
    insecure: LocalFederation,
) -> None:
    key = SignerKey.generate("CZ")
    _bill_for_others(insecure, key, respond=prove_with("CZ", key))

    other = SignerKey.generate("CZ")
    code, details = converse_refused(insecure, _hello("CZ", other.verifier.text()))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details.startswith("center CZ already signs with key")


def test_usage_signed_while_the_broker_was_down_survives_an_agent_crash(
    federation: LocalFederation, stub: broker_pb2_grpc.BrokerServiceStub, tmp_path: Path
) -> None:
    center = make_center("CA", pools={"p": ("ascend-910", 8, 20_000)})
    federation.start_agent(center)
    wait_centers(stub, 1)
    gate = tmp_path / "go"
    job_id = _submit_as(federation, TENANT, 0, gate)
    with federation.client(TENANT) as user:
        wait_for(lambda: user.get_job(job_id).state == JobState.RUNNING, 20, "the job to run")
    assert federation.broker is not None
    federation.broker.kill()
    gate.touch()  # the job ends while nobody can acknowledge its usage
    outbox = federation.root / "work" / "CA" / "usage-outbox"
    kept = wait_for(lambda: sorted(outbox.glob("*.entry")), 20, "the record kept on disk")
    federation.agents["CA"].kill()  # ... and the agent dies before delivering it
    record_id = kept[0].stem.replace("_", "/", 1)

    federation.start_broker()
    federation.start_agent(center)  # same key, same workdir
    with federation.channel(Role.USER, tenant=TENANT) as channel:  # named in the record
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)

        def proved() -> str | None:
            try:
                request = ledger_pb2.ProveRecordRequest(record_id=record_id)
                return str(ledger.ProveRecord(request, timeout=5).bundle_json)
            except grpc.RpcError:
                return None

        bundle = json.loads(wait_for(proved, 30, "the record in the log"))
    assert bundle["index"] >= 2
    wait_for(lambda: not list(outbox.glob("*.entry")), 10, "the outbox to empty")


def _hello(center_id: str, usage_key: str = "") -> agent_pb2.ConnectRequest:
    return agent_pb2.ConnectRequest(
        hello=agent_pb2.Hello(
            center=wire.center_to_proto(make_center(center_id)), usage_key=usage_key
        )
    )


def _heartbeat() -> agent_pb2.ConnectRequest:
    return agent_pb2.ConnectRequest(heartbeat=agent_pb2.Heartbeat(sent_at_ms=1))


def _welcomed(replies: list[agent_pb2.ConnectResponse]) -> bool:
    return any(r.HasField("welcome") for r in replies)


def _centers_and_entries(federation: LocalFederation) -> tuple[list[tuple[Any, ...]], int]:
    """The centers the broker has stored and the size of its ledger."""
    with sqlite3.connect(f"file:{federation.db}?mode=ro", uri=True) as db:
        centers = db.execute("SELECT center_id FROM centers ORDER BY center_id").fetchall()
    return centers, _ledger_entries(federation)


def test_a_center_id_cannot_be_taken_over_without_its_certificate(
    federation: LocalFederation,
) -> None:
    _, key = federation.center_identity("CT")
    public = key.verifier.text()  # anyone can read it from the ledger
    ct = federation.credentials(Role.CENTER, "CT")
    welcomed = converse(federation.address, _hello("CT", public), until=_welcomed, credentials=ct)
    # TLS proved the certified key: no challenge.
    assert [r.WhichOneof("msg") for r in welcomed] == ["welcome"]

    before = _centers_and_entries(federation)
    cu = federation.credentials(Role.CENTER, "CU")
    user = federation.credentials(Role.USER, tenant=TENANT)
    attempts = {
        "another center's certificate, its public key": converse_refused(
            federation, _hello("CT", public), _heartbeat(), credentials=cu
        ),
        "another center's certificate, no key": converse_refused(
            federation, _hello("CT"), _heartbeat(), credentials=cu
        ),
        "its own certificate, another key": converse_refused(
            federation, _hello("CT", SignerKey.generate("CT").verifier.text()), credentials=ct
        ),
        "a user's certificate": converse_refused(
            federation, _hello("CT", public), _heartbeat(), credentials=user
        ),
    }
    for what, (code, _) in attempts.items():
        assert code == grpc.StatusCode.PERMISSION_DENIED, what
    assert attempts["another center's certificate, its public key"][1] == (
        "this certificate is for center CU, not 'CT'"
    )
    assert attempts["another center's certificate, no key"][1] == (
        "this certificate is for center CU, not 'CT'"
    )
    assert attempts["its own certificate, another key"][1].startswith(
        "center CT declares a usage key its certificate does not bind"
    )
    assert _centers_and_entries(federation) == before  # nothing stored, nothing logged
    # The real center is still the one the broker knows.
    again = converse(federation.address, _hello("CT", public), until=_welcomed, credentials=ct)
    assert again[-1].HasField("welcome")


def test_in_development_mode_a_center_id_cannot_be_taken_over_without_its_key(
    insecure: LocalFederation,
) -> None:
    key = SignerKey.generate("CT")
    public = key.verifier.text()  # anyone can read it from the ledger
    welcomed = converse(
        insecure.address,
        _hello("CT", public),
        respond=prove_with("CT", key),
        until=_welcomed,
    )
    assert [r.WhichOneof("msg") for r in welcomed] == ["challenge", "welcome"]

    attempts = {
        "no key": converse_refused(insecure, _hello("CT"), _heartbeat()),
        "its public key, no proof": converse_refused(insecure, _hello("CT", public), _heartbeat()),
        "its public key, a forged proof": converse_refused(
            insecure, _hello("CT", public), respond=prove_with("CT", SignerKey.generate("CT"))
        ),
        "a proof for another center": converse_refused(
            insecure, _hello("CT", public), respond=prove_with("CU", key)
        ),
    }
    for what, (code, details) in attempts.items():
        assert code == grpc.StatusCode.PERMISSION_DENIED, what
        assert details.startswith("center CT"), (what, details)
    assert attempts["no key"][1] == (
        f"center CT must answer the challenge with a proof of key {key.verifier.key_id}"
    )
    assert attempts["its public key, a forged proof"][1] == (
        f"center CT: the proof does not verify with key {key.verifier.key_id}"
    )
    # The real center is still the one the broker knows.
    again = converse(
        insecure.address, _hello("CT", public), respond=prove_with("CT", key), until=_welcomed
    )
    assert again[-1].HasField("welcome")


def converse_refused(
    federation: LocalFederation,
    *messages: agent_pb2.ConnectRequest,
    respond: Respond = no_answer,
    credentials: Credentials | None = None,
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        converse(federation.address, *messages, respond=respond, credentials=credentials)
    return info.value.code(), info.value.details() or ""


def test_a_centers_ids_and_words_are_bounded_on_its_stream(federation: LocalFederation) -> None:
    _, key = federation.center_identity("CW")
    cw = federation.credentials(Role.CENTER, "CW")
    RUNNING = wire.state_to_proto(JobState.RUNNING)
    hello = _hello("CW", key.verifier.text())
    cases = {
        "a 1 MB message": agent_pb2.JobUpdate(
            claim_id="c-1", job_id="j-1", state=RUNNING, message="m" * 10**6
        ),
        "a claim id with a slash": agent_pb2.JobUpdate(claim_id="c/1", job_id="j-1", state=RUNNING),
        "a NUL in a reason": None,
    }
    reply = agent_pb2.ClaimReply(claim_id="c-1", accepted=False, reason="no\0pe")
    for what, update in cases.items():
        bad = (
            agent_pb2.ConnectRequest(claim_reply=reply)
            if update is None
            else agent_pb2.ConnectRequest(job_update=update)
        )
        with pytest.raises(grpc.RpcError) as info:
            converse(federation.address, hello, then=[bad], credentials=cw)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
        assert len(info.value.details() or "") < 200, what  # never the whole value
    assert "message must be at most 4096 characters" in _last_details(
        federation,
        hello,
        cw,
        agent_pb2.JobUpdate(claim_id="c-1", job_id="j-1", state=RUNNING, message="m" * 5000),
    )


def _last_details(
    federation: LocalFederation, hello: agent_pb2.ConnectRequest, credentials: Credentials | None,
    update: agent_pb2.JobUpdate,
) -> str:  # fmt: skip
    with pytest.raises(grpc.RpcError) as info:
        converse(
            federation.address,
            hello,
            then=[agent_pb2.ConnectRequest(job_update=update)],
            credentials=credentials,
        )
    return info.value.details() or ""
