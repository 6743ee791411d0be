"""Only admitted parties take part, each only in its own name: a real broker over mutual
TLS on loopback, real certificates from a throw-away federation, every refusal checked
for its status and for an unchanged store and ledger."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cli.federation import LocalFederation
from client import BrokerClient
from core import wire
from core.errors import PermissionDenied, Unauthenticated
from core.types import JobSpec
from icx.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    broker_pb2,
    broker_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    types_pb2,
)
from identity import Authority, Credentials, Role, init_member
from identity.certs import (
    certificate_pem,
    identity_uri,
    load_certificates,
    load_key,
    load_request,
    member_of,
    request_pem,
)
from identity.tls import channel
from tests.agent_stream import converse
from tests.conftest import FAST_BROKER, make_center, run_icx, wait_centers, wait_for

SLEEP_JOB = JobSpec(
    accelerator="any",
    devices=1,
    estimated_s=3600,
    command=(sys.executable, "-c", "import time; print('hello', flush=True); time.sleep(30)"),
)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(
        root=tmp_path_factory.mktemp("members") / "fed", broker_args=FAST_BROKER
    ) as f:
        f.start_agent(make_center("c1"))
        with f.client("lab-a") as a:
            wait_centers(a, 1)
        yield f


def _state(fed: LocalFederation) -> tuple[int, int, int]:
    """Jobs, job events and ledger entries on disk: what a refusal must leave alone."""
    with sqlite3.connect(fed.db) as db:
        jobs = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
        events = db.execute("SELECT count(*) FROM events").fetchone()[0]
    with sqlite3.connect(f"{fed.db}.ledger") as db:
        entries = db.execute("SELECT count(*) FROM entries").fetchone()[0]
    return jobs, events, entries


def _quiet_state(fed: LocalFederation) -> tuple[int, int, int]:
    """`_state` once nothing is under way: no job live, the center's usage all delivered,
    and nothing changing for half a second (a job that ended is still being metered)."""
    outbox = fed.root / "work" / "c1" / "usage-outbox"
    seen: list[tuple[int, int, int]] = []

    def quiet() -> bool:
        with sqlite3.connect(fed.db) as db:
            live = db.execute(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'claimed', 'running')"
            ).fetchone()[0]
        seen.append(_state(fed))
        return not live and not list(outbox.glob("*.entry")) and seen[-6:] == [seen[-1]] * 6

    wait_for(quiet, 30, "the federation quiet")
    return seen[-1]


def _running_on_disk(fed: LocalFederation, job_id: str) -> bool:
    with sqlite3.connect(fed.db) as db:
        query = "SELECT count(*) FROM events WHERE job_id = ? AND state = 'running'"
        return bool(db.execute(query, (job_id,)).fetchone()[0])


def _stranger(tmp_path: Path, name: str = "mallory") -> Credentials:
    """A well-formed member of another federation."""
    other = Authority.create(tmp_path / "other-federation", "other")
    init_member(tmp_path / name, name)
    other.admit_into(tmp_path / name, role=Role.USER, tenant="lab-a", days=30)
    return Credentials.load(tmp_path / name)


def _expired(fed: LocalFederation, tmp_path: Path, *, seconds_left: float) -> Path:
    """A user of lab-a whose certificate ends `seconds_left` from now (negative: ended)."""
    folder = tmp_path / f"expiring-{seconds_left}"
    init_member(folder, "late.user")
    # Issued so that one day of validity ends `seconds_left` from now.
    issued = dt.datetime.now(dt.UTC) - dt.timedelta(days=1) + dt.timedelta(seconds=seconds_left)
    cert, _ = fed.authority.admit(
        (folder / "request.pem").read_bytes(), role=Role.USER, tenant="lab-a", days=1, now=issued
    )
    (folder / "cert.pem").write_bytes(certificate_pem(cert))
    (folder / "root.pem").write_bytes(certificate_pem(fed.authority.root))
    return folder


def _raw_list(address: str, creds_pem: tuple[bytes, bytes | None, bytes | None]) -> grpc.RpcError:
    root, key, chain = creds_pem
    creds = grpc.ssl_channel_credentials(root, key, chain)
    with grpc.secure_channel(address, creds) as ch, pytest.raises(grpc.RpcError) as err:
        broker_pb2_grpc.BrokerServiceStub(ch).ListJobs(broker_pb2.ListJobsRequest(), timeout=5)
    return err.value


# ------------------------------------------------------------ no membership


def test_a_request_cannot_state_its_own_role_or_a_users_host_names(tmp_path: Path) -> None:
    """The certificate states what the coordinator admitted: a request's claimed role,
    region or tenant are not copied, nor host names for a member that serves nothing."""
    authority = Authority.create(tmp_path / "fed", "test")
    key = ec.generate_private_key(ec.SECP256R1())
    claimed = {"name": "eve", "role": "coordinator", "region": "east", "tenant": "other"}
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "eve")]))
        .add_extension(
            x509.SubjectAlternativeName([identity_uri(claimed), x509.DNSName("eve.example")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert, member = authority.admit(request_pem(csr), role=Role.USER, tenant="acme")
    assert (member.name, member.role, member.region, member.tenant) == (
        "eve", Role.USER, "", "acme"
    )  # fmt: skip
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(names) == [
        x509.UniformResourceIdentifier("icx:member?name=eve&role=user&tenant=acme")
    ]


def test_a_certificate_stating_two_identities_is_refused(tmp_path: Path) -> None:
    authority = Authority.create(tmp_path / "fed", "test")
    init_member(tmp_path / "eve", "eve")
    cert, _ = authority.admit(
        (tmp_path / "eve" / "request.pem").read_bytes(), role=Role.USER, tenant="acme"
    )
    root_key = load_key((authority.folder / "root-key.pem").read_bytes())
    twice = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    identity_uri({"name": "eve", "role": "user", "tenant": "acme"}),
                    identity_uri({"name": "eve", "role": "coordinator"}),
                ]
            ),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    with pytest.raises(PermissionDenied, match="states 2 identities"):
        member_of(twice)


def test_no_client_certificate_is_refused_in_the_handshake(fed: LocalFederation) -> None:
    before = _quiet_state(fed)
    root = (fed.authority.folder / "root.pem").read_bytes()
    err = _raw_list(fed.address, (root, None, None))
    # grpcio requests a client certificate only by requiring it: TLS ends the connection.
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(fed.address) as ch, pytest.raises(grpc.RpcError):
        broker_pb2_grpc.BrokerServiceStub(ch).SubmitJob(broker_pb2.SubmitJobRequest(), timeout=5)
    assert _state(fed) == before


def test_a_certificate_from_another_root_is_refused(fed: LocalFederation, tmp_path: Path) -> None:
    before = _quiet_state(fed)
    stranger = _stranger(tmp_path)
    with BrokerClient(fed.address, stranger) as client, pytest.raises(Unauthenticated) as err:
        client.submit(SLEEP_JOB)
    assert "TLS handshake" in str(err.value)
    assert _state(fed) == before


def test_an_expired_certificate_is_refused(fed: LocalFederation, tmp_path: Path) -> None:
    folder = _expired(fed, tmp_path, seconds_left=-60)
    with pytest.raises(Unauthenticated, match="expired"):
        Credentials.load(folder)  # the client says so before dialling
    before = _quiet_state(fed)
    key, cert = (folder / "key.pem").read_bytes(), (folder / "cert.pem").read_bytes()
    err = _raw_list(fed.address, ((folder / "root.pem").read_bytes(), key, cert))
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # refused by TLS at connection time
    assert _state(fed) == before


def test_a_certificate_that_expires_on_an_open_connection_is_refused_from_then_on(
    fed: LocalFederation, tmp_path: Path
) -> None:
    folder = _expired(fed, tmp_path, seconds_left=4)
    creds = Credentials.load(folder)
    with BrokerClient(fed.address, creds) as client:
        assert client.whoami().tenant == "lab-a"
        wait_for(lambda: _refused(client.whoami), 10, "the certificate's end")
        assert dt.datetime.now(dt.UTC) > creds.member.not_after
        before = _quiet_state(fed)
        with pytest.raises(Unauthenticated, match="expired"):
            client.submit(SLEEP_JOB)
    assert _state(fed) == before


def _refused(call: Callable[[], object]) -> bool:
    """Whether `call` is refused as unauthenticated (it still answers otherwise)."""
    try:
        call()
    except Unauthenticated:
        return True
    return False


# --------------------------------------------------------------- wrong role


def test_a_user_certificate_on_the_agent_stream_is_refused(fed: LocalFederation) -> None:
    before = _quiet_state(fed)
    hello = agent_pb2.ConnectRequest(hello=agent_pb2.Hello(center=types_pb2.CenterDescriptor()))
    with pytest.raises(grpc.RpcError) as err:
        converse(fed.address, hello, credentials=fed.credentials(Role.USER, tenant="lab-a"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "user may not call Connect" in (err.value.details() or "")
    assert _state(fed) == before


def test_a_center_is_refused_in_a_region_it_was_not_admitted_in(fed: LocalFederation) -> None:
    """The region a coordinator admitted a center in is the one it joins: a config that
    says another is refused, and the center does not join."""
    before = _quiet_state(fed)
    fed.center_identity("c-region", region="TF")  # admitted in TF
    elsewhere = make_center("c-region", region="GS")
    hello = agent_pb2.ConnectRequest(hello=agent_pb2.Hello(center=wire.center_to_proto(elsewhere)))
    with pytest.raises(grpc.RpcError) as err:
        converse(fed.address, hello, credentials=fed.credentials(Role.CENTER, "c-region"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admitted in region TF, not 'GS'" in (err.value.details() or "")
    assert _state(fed) == before


def test_a_center_certificate_on_the_user_api_is_refused(fed: LocalFederation) -> None:
    before = _quiet_state(fed)
    center = fed.credentials(Role.CENTER, "c1")
    with BrokerClient(fed.address, center) as client:
        with pytest.raises(PermissionDenied, match="center may not call SubmitJob"):
            client.submit(SLEEP_JOB)
        with pytest.raises(PermissionDenied):
            client.list_jobs()
        assert client.whoami().role == "center"  # what any member may ask
    assert _state(fed) == before


# ------------------------------------------------------------ own name only


def test_a_user_acts_only_on_its_own_tenants_jobs(fed: LocalFederation) -> None:
    with fed.client("lab-a") as a, fed.client("lab-b") as b:
        job = a.submit(SLEEP_JOB)
        # The broker answers from memory before the event is committed: wait for the disk.
        wait_for(lambda: _running_on_disk(fed, job.job_id), 20, "running, on disk")
        before = _state(fed)
        for call in (
            lambda: b.get_job(job.job_id),
            lambda: b.cancel(job.job_id),
            lambda: list(b.watch(job.job_id, follow=False)),
            lambda: list(b.watch(job.job_id, include_logs=True, follow=False)),
        ):
            with pytest.raises(PermissionDenied, match="another tenant"):
                call()
        assert _state(fed) == before
        assert job.job_id not in {j.job_id for j in b.list_jobs().jobs}
        assert {j.tenant for j in b.list_jobs().jobs} <= {"lab-b"}
        assert job.job_id in {j.job_id for j in a.list_jobs().jobs}
        assert {j.tenant for j in a.list_jobs().jobs} == {"lab-a"}
        assert a.cancel(job.job_id).state.name in ("CANCELLED", "RUNNING")


def test_the_tenant_comes_from_the_certificate_not_from_a_header(fed: LocalFederation) -> None:
    with fed.channel(Role.USER, tenant="lab-b") as ch:
        stub = broker_pb2_grpc.BrokerServiceStub(ch)
        spec = JobSpec(accelerator="any", devices=1, estimated_s=60, command=("true",))
        reply = stub.SubmitJob(
            broker_pb2.SubmitJobRequest(spec=wire.spec_to_proto(spec)),
            metadata=(("x-icx-tenant", "lab-a"),),
            timeout=10,
        )
    assert reply.job.tenant == "lab-b"


def test_only_a_coordinator_dumps_rounds_and_sees_every_job(fed: LocalFederation) -> None:
    with fed.client("lab-a") as a, fed.client(role=Role.COORDINATOR) as coordinator:
        job = a.submit(SLEEP_JOB)
        with pytest.raises(PermissionDenied, match="user may not call DumpRound"):
            a.dump_round(current=True)
        dump = coordinator.dump_round(current=True)
        assert dump.problem_json
        tenants = {j.tenant for j in coordinator.list_jobs().jobs}
        assert "lab-a" in tenants
        with pytest.raises(PermissionDenied):
            coordinator.submit(SLEEP_JOB)  # a coordinator is no tenant
        a.cancel(job.job_id)  # not left to end during another test's window


def test_statements_are_read_only_by_the_parties_they_name(fed: LocalFederation) -> None:
    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    with fed.client("lab-a") as a, fed.client(role=Role.COORDINATOR) as coordinator:
        with pytest.raises(PermissionDenied, match="only its own statement"):
            a.statement(period, party="lab-b")
        with pytest.raises(PermissionDenied, match="only its own statement"):
            a.statement(period, party="c1")
        own = a.statement(period)
        assert b'"party":"lab-a"' in own
        everyone = coordinator.statement(period)
        assert b'"party":' not in everyone.split(b'"parties"')[0]  # the whole statement
    center = fed.credentials(Role.CENTER, "c1")
    with BrokerClient(fed.address, center) as c1:
        assert b'"party":"c1"' in c1.statement(period)


def test_a_record_is_proven_only_to_the_parties_it_names(fed: LocalFederation) -> None:
    with fed.client("lab-a") as a:
        job = a.submit(JobSpec(accelerator="any", devices=1, estimated_s=60, command=("true",)))
        wait_for(lambda: a.get_job(job.job_id).state.terminal, 20, "done")
    index = wait_for(lambda: _usage_index(fed, job.job_id), 20, "usage logged")
    with fed.client("lab-a") as a, fed.client("lab-b") as b:
        assert a.prove(index=index).index == index
        with pytest.raises(PermissionDenied, match="not named"):
            b.prove(index=index)


def _usage_index(fed: LocalFederation, job_id: str) -> int | None:
    """The ledger index of the job's usage record, once logged and checkpointed."""
    with sqlite3.connect(f"{fed.db}.ledger") as db:
        row = db.execute(
            "SELECT idx FROM entries WHERE type = 'usage' AND instr(leaf, ?) > 0",
            (job_id.encode(),),
        ).fetchone()
        covered = db.execute("SELECT max(size) FROM checkpoints").fetchone()[0] or 0
    return row[0] if row and row[0] < covered else None


# ------------------------------------------------------------------ revocation


def test_a_user_revoked_while_the_broker_runs_is_refused_at_once(
    fed: LocalFederation, tmp_path: Path
) -> None:
    folder = fed.member("revoked.user", Role.USER, tenant="lab-a")
    creds = Credentials.load(folder)
    with BrokerClient(fed.address, creds) as client, fed.client(role=Role.COORDINATOR) as co:
        assert client.whoami().name == "revoked.user"
        taken = fed.authority.revoke([creds.member.serial])
        assert co.update_revocations(taken.pem) == taken.number
        before = _quiet_state(fed)
        with pytest.raises(Unauthenticated, match="revoked"):
            client.submit(SLEEP_JOB)
        assert _state(fed) == before
        # An old list cannot un-revoke anyone.
        with pytest.raises(PermissionDenied, match="not newer"):
            co.update_revocations(taken.pem)
        # Only a coordinator hands the broker a list.
        with fed.client("lab-a") as a, pytest.raises(PermissionDenied):
            a.update_revocations(taken.pem)
    # Kept beside the broker's identity: a restart remembers it.
    kept = fed.root / "members" / "broker-broker" / "revocations.pem"
    assert kept.read_bytes() == taken.pem


def test_a_revoked_center_is_cut_off_and_its_key_revoked_in_the_ledger(tmp_path: Path) -> None:
    with LocalFederation(root=tmp_path / "fed", broker_args=FAST_BROKER) as fed:
        agent = fed.start_agent(make_center("c9"))
        with fed.client("lab-a") as a, fed.client(role=Role.COORDINATOR) as co:
            wait_centers(a, 1)
            member = fed.credentials(Role.CENTER, "c9")
            assert member is not None
            taken = fed.authority.revoke([member.member.serial])
            co.update_revocations(taken.pem)
            wait_for(lambda: not any(c.connected for c in co.centers()), 5, "the center cut off")
            # By the revocation, not by silence (the center's expiry): the broker said so.
            assert fed.broker is not None
            assert re.search(
                r"center c9: .*revoked.*: ending its stream", fed.broker.log_path.read_text()
            )
            # The agent is told, tries again, and is refused again: it cannot come back.
            wait_for(
                lambda: agent.log_path.read_text().count("UNAUTHENTICATED") >= 2,
                10,
                "the agent's stream ended and its reconnection refused",
            )
            assert "is revoked" in agent.log_path.read_text()
            assert not any(c.connected for c in co.centers())
    with sqlite3.connect(f"{fed.db}.ledger") as db:
        leaves = [bytes(r[0]) for r in db.execute("SELECT leaf FROM entries ORDER BY idx")]
    assert any(b'"action":"revoke"' in leaf and b"revoked" in leaf for leaf in leaves)
    assert any(b'"action":"admit"' in leaf and b"BEGIN CERTIFICATE" in leaf for leaf in leaves)


def test_whoami_says_who_the_broker_thinks_you_are(fed: LocalFederation) -> None:
    with fed.client("lab-a") as a:
        who = a.whoami()
    assert (who.name, who.role, who.tenant, who.authenticated) == (
        "lab-a.user",
        "user",
        "lab-a",
        True,
    )
    with channel(fed.address, fed.credentials(Role.COORDINATOR)) as ch:
        reply = admin_pb2_grpc.AdminServiceStub(ch).WhoAmI(admin_pb2.WhoAmIRequest(), timeout=5)
    assert reply.role == "coordinator"


def test_ledger_reads_need_membership_too(fed: LocalFederation) -> None:
    with fed.channel(Role.CENTER, "c1") as ch:
        key = ledger_pb2_grpc.LedgerServiceStub(ch).GetLogKey(
            ledger_pb2.GetLogKeyRequest(), timeout=5
        )
    assert key.key
    with fed.channel(Role.USER, tenant="lab-a") as ch, pytest.raises(grpc.RpcError) as err:
        ledger_pb2_grpc.LedgerServiceStub(ch).AddCosignature(
            ledger_pb2.AddCosignatureRequest(note="x"), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


# ------------------------------------------------------------------ delegation


def test_a_tenant_administrator_admits_only_users_of_its_own_tenant(
    fed: LocalFederation, tmp_path: Path
) -> None:
    admin = fed.member("acme-admin", Role.TENANT_ADMIN, tenant="acme")
    root = fed.authority.folder / "root.pem"
    bob = tmp_path / "bob"
    made = run_icx("user", "init", "--name", "bob", "--identity", str(bob), "--root", str(root))
    assert made.returncode == 0, made.stderr
    admitted = run_icx(
        "admin", "admit", str(bob / "request.pem"), "--role", "user", "--tenant", "acme",
        "--issuer", str(admin), "--out", str(tmp_path / "bob.cert.pem"), "--json",
    )  # fmt: skip
    assert admitted.returncode == 0, admitted.stderr
    assert json.loads(admitted.stdout)["tenant"] == "acme"
    refused = run_icx(
        "admin", "admit", str(bob / "request.pem"), "--role", "user", "--tenant", "lab-a",
        "--issuer", str(admin), "--out", str(tmp_path / "other.cert.pem"),
    )  # fmt: skip
    assert refused.returncode == 1
    assert "admits only users of that tenant" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "other.cert.pem").exists()
    accepted = run_icx("user", "accept", str(tmp_path / "bob.cert.pem"), "--identity", str(bob))
    assert accepted.returncode == 0, accepted.stderr
    who = run_icx("whoami", "--identity", str(bob), "--broker", fed.address, "--json")
    assert who.returncode == 0, who.stderr
    assert (json.loads(who.stdout)["name"], json.loads(who.stdout)["tenant"]) == ("bob", "acme")

    # A certificate the administrator signs outside the rule (a user of another tenant)
    # passes X.509 path validation, and is refused by the broker all the same.
    forged_dir = tmp_path / "forged"
    init_member(forged_dir, "eve")
    admin_key = load_key((admin / "key.pem").read_bytes())
    admin_cert = load_certificates((admin / "cert.pem").read_bytes())[0]
    forged = _sign_outside_the_rule(forged_dir, admin_key, admin_cert, tenant="lab-a")
    (forged_dir / "cert.pem").write_bytes(certificate_pem(forged, admin_cert))
    (forged_dir / "root.pem").write_bytes(root.read_bytes())
    before = _quiet_state(fed)
    creds = Credentials(
        key_pem=(forged_dir / "key.pem").read_bytes(),
        chain_pem=(forged_dir / "cert.pem").read_bytes(),
        root_pem=root.read_bytes(),
        member=member_of(forged),
        root=fed.authority.root,
    )
    with BrokerClient(fed.address, creds) as eve, pytest.raises(Unauthenticated, match="acme"):
        eve.list_jobs()
    assert _state(fed) == before

    # Revoking the administrator revokes the users it admitted.
    bob_creds = Credentials.load(bob)
    with BrokerClient(fed.address, bob_creds) as b, fed.client(role=Role.COORDINATOR) as co:
        assert b.whoami().tenant == "acme"
        admin_serial = load_certificates((admin / "cert.pem").read_bytes())[0].serial_number
        co.update_revocations(fed.authority.revoke([admin_serial]).pem)
        with pytest.raises(Unauthenticated, match="revoked"):
            b.whoami()


def _sign_outside_the_rule(
    folder: Path, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate, *, tenant: str
) -> x509.Certificate:
    csr = load_request((folder / "request.pem").read_bytes())
    now = dt.datetime.now(dt.UTC)
    identity = {"name": "eve", "role": "user", "tenant": tenant}
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(issuer.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([identity_uri(identity)]), critical=False)
        .sign(key, hashes.SHA256())
    )


def test_the_ledger_audit_checks_admissions_against_the_root(fed: LocalFederation) -> None:
    """Every usage key in the broker's ledger was admitted with a certificate from the
    federation's root, and every record signed by a key admitted for its center then."""
    with fed.client("lab-a") as a:
        job = a.submit(JobSpec(accelerator="any", devices=1, estimated_s=60, command=("true",)))
        wait_for(lambda: a.get_job(job.job_id).state.terminal, 20, "done")
    wait_for(lambda: _usage_index(fed, job.job_id), 20, "usage logged")
    root = fed.authority.folder / "root.pem"
    audit = run_icx("ledger", "audit", "--db", f"{fed.db}.ledger", "--root", str(root), "--json")
    assert audit.returncode == 0, audit.stderr
    other = Authority.create(fed.root / "another-federation", "other")
    wrong = run_icx(
        "ledger", "audit", "--db", f"{fed.db}.ledger", "--root", str(other.folder / "root.pem")
    )
    assert wrong.returncode == 1
    assert "entry 1" in wrong.stderr
