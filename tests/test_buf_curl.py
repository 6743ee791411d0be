"""An independent client: `buf curl` (not our code) lists the broker's services through
server reflection and calls ListCenters and the health check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from cli.federation import LocalFederation
from icx.v1 import broker_pb2_grpc
from tests.conftest import make_center, wait_centers

BUF = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")


def buf_curl(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert BUF, "buf is installed with the dev dependencies (buf-bin)"
    return subprocess.run(
        [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_buf_curl_lists_services_and_calls_list_centers(
    federation: LocalFederation, stub: broker_pb2_grpc.BrokerServiceStub
) -> None:
    federation.start_agent(make_center("CQ", region="CY"))
    wait_centers(stub, 1)
    base = f"http://{federation.address}"

    listed = buf_curl(federation.address, "--list-services", base)
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {
        "icx.v1.BrokerService",
        "icx.v1.AgentService",
        "grpc.health.v1.Health",
    }

    reply = buf_curl(federation.address, f"{base}/icx.v1.BrokerService/ListCenters")
    assert reply.returncode == 0, reply.stderr
    centers = json.loads(reply.stdout)["centers"]
    assert [c["center"]["centerId"] for c in centers] == ["CQ"]
    assert centers[0]["connected"] is True
    assert centers[0]["offer"]["pools"][0]["devicesFree"] == 8

    health = buf_curl(federation.address, f"{base}/grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}
