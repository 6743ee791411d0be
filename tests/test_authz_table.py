"""Every RPC the broker serves, called by every role, answers as the authorization table
(broker.authz.RULES) says: a role without the right is refused with PERMISSION_DENIED
before the handler runs, a role with it gets past the gate. A method without a row
fails here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from broker.authz import RULES
from cli.federation import LocalFederation
from icx.v1 import admin_pb2, agent_pb2, broker_pb2, federation_pb2, ledger_pb2, national_pb2
from identity import Credentials, Role
from identity.tls import channel
from tests.conftest import FAST_BROKER

SERVED = (
    broker_pb2,
    agent_pb2,
    admin_pb2,
    federation_pb2,
    ledger_pb2,
    national_pb2,
    health_pb2,
    reflection_pb2,
)
ROLES = (Role.USER, Role.CENTER, Role.BROKER, Role.COORDINATOR)


def _methods() -> dict[str, MethodDescriptor]:
    out = {}
    for module in SERVED:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out[f"/{service.full_name}/{method.name}"] = method
    return out


METHODS = _methods()


def test_every_served_method_has_exactly_one_rule() -> None:
    assert set(METHODS) - set(RULES) == set(), "methods without a rule"
    assert set(RULES) - set(METHODS) == set(), "rules for methods the broker does not serve"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(
        root=tmp_path_factory.mktemp("table") / "fed", broker_args=FAST_BROKER
    ) as f:
        yield f


def _credentials(fed: LocalFederation, role: Role) -> Credentials:
    if role is Role.BROKER:
        creds = Credentials.load(fed.member("peer-broker", Role.BROKER, region="TF"))
    elif role is Role.CENTER:
        creds = fed.credentials(Role.CENTER, "c-table")
    else:
        creds = fed.credentials(role, tenant="lab-a")
    assert creds is not None
    return creds


GATE = "gate"


def _call(chan: grpc.Channel, path: str, method: MethodDescriptor) -> grpc.StatusCode | str:
    """Call `path` with an empty request (for a stream: one empty message) and return the
    status it ends with (OK if it answers), or GATE when the gate refused the role (a
    handler may refuse with PERMISSION_DENIED for its own reasons)."""
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    kw = {
        "request_serializer": request_type.SerializeToString,
        "response_deserializer": response_type.FromString,
    }
    try:
        if method.client_streaming:
            call = chan.stream_stream(path, **kw)(iter([request_type()]), timeout=3)
            next(iter(call), None)
        elif method.server_streaming:
            call = chan.unary_stream(path, **kw)(request_type(), timeout=3)
            next(iter(call), None)
        else:
            chan.unary_unary(path, **kw)(request_type(), timeout=3)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.PERMISSION_DENIED and "may not call" in (
            err.details() or ""
        ):
            return GATE
        return err.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("role", ROLES, ids=str)
def test_each_role_gets_what_the_table_gives_it(fed: LocalFederation, role: Role) -> None:
    creds = _credentials(fed, role)
    wrong: list[str] = []
    with channel(fed.address, creds) as chan:
        for path, method in sorted(METHODS.items()):
            code = _call(chan, path, method)
            allowed = role in RULES[path].roles
            if allowed and code in (
                GATE,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.UNIMPLEMENTED,
            ):
                wrong.append(f"{path}: {role} is allowed but got {code}")
            if not allowed and code != GATE:
                wrong.append(f"{path}: {role} is not allowed but got {code}")
    assert wrong == []


def test_the_table_is_written_down(tmp_path: Path) -> None:
    """docs/security.md carries the table: every method is named there with its roles."""
    text = (Path(__file__).parents[1] / "docs" / "security.md").read_text()
    for path, rule in RULES.items():
        name = path.rpartition("/")[2]
        line = next((ln for ln in text.splitlines() if f"`{name}`" in ln), None)
        assert line is not None, f"{name} is not in docs/security.md"
        for role in rule.roles:
            assert str(role) in line, f"{name}: {role} missing from its row in docs/security.md"
