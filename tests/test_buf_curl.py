"""An independent client: `buf curl` (not our code) lists the broker's services through
server reflection and calls ListCenters and the health check: over mutual TLS with a
member's key, certificate and the federation's root, and against a development broker
(--insecure) in plaintext. Plaintext to a broker that runs TLS gets no answer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.federation import LocalFederation
from identity import Role
from tests.conftest import FAST_BROKER, make_center, wait_centers

BUF = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")


def buf_curl(url: str, *args: str, member: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`buf curl ARGS URL`: over TLS presenting the member folder's certificate and
    trusting its root when `member` is given, else plaintext HTTP/2."""
    assert BUF, "buf is installed with the dev dependencies (buf-bin)"
    if member is None:
        how = ["--http2-prior-knowledge"]
    else:
        how = ["--cacert", str(member / "root.pem")]
        how += ["--cert", str(member / "cert.pem"), "--key", str(member / "key.pem")]
    return subprocess.run(
        [BUF, "curl", "--protocol", "grpc", *how, *args, url],
        capture_output=True,
        text=True,
        timeout=60,
    )


def check_broker(base: str, member: Path | None) -> None:
    """Reflection lists the services; ListCenters and the health check answer."""
    listed = buf_curl(base, "--list-services", member=member)
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {
        "icx.v1.BrokerService",
        "icx.v1.AgentService",
        "grpc.health.v1.Health",
    }

    reply = buf_curl(f"{base}/icx.v1.BrokerService/ListCenters", member=member)
    assert reply.returncode == 0, reply.stderr
    centers = json.loads(reply.stdout)["centers"]
    assert [c["center"]["centerId"] for c in centers] == ["CQ"]
    assert centers[0]["connected"] is True
    assert centers[0]["offer"]["pools"][0]["devicesFree"] == 8

    health = buf_curl(f"{base}/grpc.health.v1.Health/Check", member=member)
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}


@pytest.fixture
def development(tmp_path: Path) -> Iterator[LocalFederation]:
    """A broker started --insecure (loopback, plaintext) with one center."""
    fed = LocalFederation(root=tmp_path / "dev", broker_args=FAST_BROKER, secure=False)
    fed.root.mkdir()
    try:
        fed.start_broker(port=0)
        yield fed
    finally:
        fed.stop()


def test_buf_curl_over_mutual_tls(federation: LocalFederation) -> None:
    federation.start_agent(make_center("CQ", region="CY"))
    with federation.client() as client:
        wait_centers(client, 1)
    user = federation.member("default.user", Role.USER, tenant="default")
    check_broker(f"https://{federation.address}", user)


def test_buf_curl_against_a_development_broker(development: LocalFederation) -> None:
    development.start_agent(make_center("CQ", region="CY"))
    with development.client() as client:
        wait_centers(client, 1)
    check_broker(f"http://{development.address}", None)


def test_plaintext_to_a_tls_broker_gets_no_answer(federation: LocalFederation) -> None:
    plain = buf_curl(f"http://{federation.address}/grpc.health.v1.Health/Check")
    assert plain.returncode != 0 and plain.stdout == ""
