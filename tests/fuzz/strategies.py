"""Hypothesis strategies for what a hostile client or center sends: any request message of
any RPC (built from the protobuf descriptors, so a new field or RPC is fuzzed without
changes here) and agent streams that start as a proper center and turn hostile.

Values lean to the edges: the ends of every integer range, NaN and infinities, empty,
huge, NUL, right-to-left and `/` strings, unknown enum numbers; fields whose meaning the
broker checks (ids, accelerators, regions, times, periods, notes, commands) draw from
real values of the running world most of the time, so that examples get past the first
check. `World` is what they read of it (the harness implements it).

Commands run on this machine when a job is placed, so a job's program is one of a few
harmless ones or one that cannot start (a NUL byte, a missing file); its arguments,
environment and everything else are free.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from core import wire
from core.accelerators import CATALOGUE
from core.handshake import proof_message
from core.money import charge_minor
from icx.v1 import agent_pb2, types_pb2
from ledger import SignerKey, UsageRecord, sign_records
from ledger.errors import InvalidRecord
from ledger.records import carbon_g, energy_wh
from tests.conftest import make_center


class World(Protocol):
    """What the strategies read of the running broker when they draw."""

    def job_ids(self) -> list[str]: ...
    def claim_ids(self) -> list[str]: ...
    def record_ids(self) -> list[str]: ...
    def checkpoint_note(self) -> str: ...
    def center_key(self, center_id: str) -> SignerKey: ...
    def agent_key(self, center_id: str) -> SignerKey: ...
    def next_seq(self) -> int: ...


def new_key(name: str) -> SignerKey:
    """A fresh key named for `name` (a key's name has no spaces or '+': any other id is
    named "fuzz")."""
    ok = re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name)
    return SignerKey.generate(name if ok else "fuzz")


def now_ms() -> int:
    return int(time.time() * 1000)


class Huge(str):
    """A long string that prints short (in hypothesis's reports too)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{self[:1]!r} * {len(self)}"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


HUGE = Huge("x" * 1_000_000)
ODD_STRINGS = (
    "", " ", "\x00", "a\x00b", "bad tenant", "SL/ASH", "ASH/p1", "\u202egnp.exe", "../..",
    "é", "\U0001f600", "-", ".", "a" * 65, "a" * 129, Huge("9" * 400), HUGE, "FA", "FB", "main",
    "any", "j-000000000000", "lab-a", "%s%n", "\r\nx: y", "\ufeff", "NaN",
)  # fmt: skip
INT_EDGES = (
    0, 1, -1, 2, 7, 60, 100, 3600, 65_535, 2**31 - 1, -(2**31), 2**32 - 1, 2**53, 2**53 + 1,
    2**62, 2**63 - 1, -(2**63), 2**64 - 1,
)  # fmt: skip
FUZZ_CENTERS = ("ZA", "ZB", "ZC")
# Only fuzzing centers offer this accelerator: a job asking for it (the bait) is claimed
# by the fuzzing center, which then answers, updates and bills its own claim (or lies).
BAIT_ACCELERATOR = "enflame-s60"
BAIT_TENANT = "lab-a"
# Placeholders the stream driver replaces once the broker has sent the bait's Reserve.
CLAIM = "@claim"
JOB = "@job"
RECORD = b"@record:"
RECORD_VARIANTS = (
    "honest", "devices", "price", "long", "early", "consumer", "record_id", "producer",
    "stranger",
)  # fmt: skip
REAL_CENTERS = ("FA", "FB")
REGIONS = ("TF", "YRD", "ZZ")
ACCELERATORS = ("any", *CATALOGUE)
PERIODS = ("2026-12", "2026-01", "0000-01", "9999-12", "2026-00", "2026-13", "1970-01", "26-1")
MS_FIELDS = frozenset(
    {"deadline_ms", "expires_at_ms", "issued_at_ms", "at_ms", "sent_at_ms", "lease_expires_at_ms"}
)
# A job's program: harmless, or one that cannot start.
SLEEPER = ("/bin/sh", "-c", "exec sleep 600")
PROGRAMS = (
    ("true",), ("false",), SLEEPER, ("/bin/echo",), ("/nonexistent/program",), ("",),
    ("tru\x00e",), ("/bin/sh\x00", "-c"),
)  # fmt: skip

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def strings() -> st.SearchStrategy[str]:
    return st.one_of(
        _sampled(ODD_STRINGS),
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True),
        st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    )


def _sampled(values: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """sampled_from, without the values in the strategy's repr (some are huge)."""
    return st.integers(0, len(values) - 1).map(values.__getitem__)


def ints(lo: int, hi: int, small: tuple[int, int] = (-3, 100)) -> st.SearchStrategy[int]:
    edges = [e for e in INT_EDGES if lo <= e <= hi]
    return st.one_of(
        st.integers(max(lo, small[0]), min(hi, small[1])),
        st.sampled_from(edges),
        st.integers(lo, hi),
    )


def _pick(values: Callable[[], list[str]]) -> st.SearchStrategy[str]:
    """One of the world's values at draw time (empty when it has none)."""

    def choose(i: int) -> str:
        found = values()
        return found[i % len(found)] if found else ""

    return st.integers(0, 7).map(choose)


def times() -> st.SearchStrategy[int]:
    """Around now (both sides, up to a day) most of the time; else any int64."""
    return st.one_of(
        st.integers(-86_400_000, 86_400_000).map(lambda d: now_ms() + d),
        st.sampled_from([e for e in INT_EDGES if -(2**63) <= e < 2**63]),
    )


def commands() -> st.SearchStrategy[list[str]]:
    return st.one_of(
        st.just([]),
        st.builds(
            lambda p, a: [*p, *a], st.sampled_from(PROGRAMS), st.lists(strings(), max_size=3)
        ),
    )


def _valid_spec_fields() -> dict[str, st.SearchStrategy[Any]]:
    """Values a careful client sends (the job is accepted, and usually placed)."""
    return {
        "name": st.sampled_from(["", "fuzz"]),
        "accelerator": st.sampled_from(["any", "ascend-910", "nvidia-h800"]),
        "devices": st.integers(1, 2),
        "estimated_seconds": st.sampled_from([60, 3600]),
        "allowed_regions": st.sampled_from([[], ["TF"], ["TF", "YRD"]]),
        "priority": st.integers(0, 100),
        "command": st.builds(list, st.sampled_from(PROGRAMS[:4])),
        "env": st.dictionaries(
            st.sampled_from(["A", "FUZZ_X"]), st.sampled_from(["1", ""]), max_size=2
        ),
    }


@st.composite
def near_valid_specs(draw: st.DrawFn, world: World) -> types_pb2.JobSpec:
    """A valid job spec with up to three fields drawn hostile instead (any value of
    their type, the world's edge values included)."""
    valid = _valid_spec_fields()
    hostile = Messages(world, max_depth=0)
    desc = types_pb2.JobSpec.DESCRIPTOR
    names = [f.name for f in desc.fields]
    bad = draw(st.lists(st.sampled_from(names), max_size=3, unique=True), label="hostile fields")
    spec = types_pb2.JobSpec()
    for name in names:
        if name in bad:
            value = draw(hostile._field(desc.fields_by_name[name], 0), label=name)
        elif name in valid:
            value = draw(valid[name])
        else:
            continue
        _set(spec, name, value)
    return spec


def _overrides(world: World) -> dict[str, st.SearchStrategy[Any]]:
    """Field name -> a strategy leaning to values the broker may accept."""
    return {
        "job_id": st.one_of(_pick(world.job_ids), st.just(JOB), strings()),
        "claim_id": st.one_of(_pick(world.claim_ids), st.just(CLAIM), strings()),
        "record_id": st.one_of(_pick(world.record_ids), strings()),
        "request_id": st.one_of(st.sampled_from(["r-1", "r-2"]), strings()),
        "center_id": st.one_of(st.sampled_from(REAL_CENTERS + FUZZ_CENTERS), strings()),
        "accelerator": st.one_of(st.sampled_from(ACCELERATORS), strings()),
        "region": st.one_of(st.sampled_from(REGIONS), strings()),
        "data_region": st.one_of(st.sampled_from(REGIONS), strings()),
        "period": st.one_of(st.sampled_from(PERIODS), strings()),
        "note": st.one_of(
            st.builds(lambda junk: world.checkpoint_note() + junk, strings()),
            st.builds(lambda: world.checkpoint_note()),
            strings(),
        ),
        "command": commands(),
        "devices": st.one_of(st.integers(1, 4), ints(-(2**31), 2**31 - 1)),
        "estimated_seconds": st.one_of(st.integers(1, 7200), ints(-(2**63), 2**63 - 1)),
        "index": ints(-(2**63), 2**63 - 1, small=(-2, 8)),
        "size1": ints(-(2**63), 2**63 - 1, small=(-2, 8)),
        "size2": ints(-(2**63), 2**63 - 1, small=(-2, 8)),
    }


@dataclass(slots=True)
class Messages:
    """Generic message strategies from descriptors, with the world's overrides."""

    world: World
    max_depth: int = 3
    overrides: dict[str, st.SearchStrategy[Any]] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.overrides = _overrides(self.world)

    def of(self, cls: type[Message]) -> st.SearchStrategy[Message]:
        return self._message(cls.DESCRIPTOR, cls, 0)

    def _spec(self, depth: int) -> st.SearchStrategy[Any]:
        if depth > 0 and self.max_depth == 0:
            return st.none()
        near_valid = near_valid_specs(self.world)
        generic = self._message(types_pb2.JobSpec.DESCRIPTOR, types_pb2.JobSpec, depth)
        return st.one_of(near_valid, near_valid, generic)

    def _scalar(self, f: FieldDescriptor) -> st.SearchStrategy[Any]:
        t = f.cpp_type
        if t in _INT_RANGES:
            lo, hi = _INT_RANGES[t]
            if f.name in MS_FIELDS:
                return times()
            return ints(lo, hi)
        if t in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
            width = 64 if t == FieldDescriptor.CPPTYPE_DOUBLE else 32
            return st.one_of(
                st.floats(-200, 200, width=width),
                st.floats(allow_nan=True, allow_infinity=True, width=width),
            )
        if t == FieldDescriptor.CPPTYPE_BOOL:
            return st.booleans()
        if t == FieldDescriptor.CPPTYPE_ENUM:
            known = [v.number for v in f.enum_type.values]
            return st.one_of(st.sampled_from(known), st.integers(-3, 40))
        if t == FieldDescriptor.CPPTYPE_STRING:
            if f.type == FieldDescriptor.TYPE_BYTES:
                return st.one_of(st.binary(max_size=48), st.sampled_from([b"", b"\x00" * 64]))
            return strings()
        raise AssertionError(f"no strategy for {f.full_name}")

    def _value(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if f.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            if f.message_type.full_name == "icx.v1.JobSpec":
                return self._spec(depth + 1)
            return self._message(f.message_type, None, depth + 1)
        return self._scalar(f)

    def _field(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if f.name in self.overrides:
            return self.overrides[f.name]
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key = f.message_type.fields_by_name["key"]
            value = f.message_type.fields_by_name["value"]
            return st.dictionaries(self._value(key, depth), self._value(value, depth), max_size=3)
        if f.label == FieldDescriptor.LABEL_REPEATED:
            return st.lists(self._value(f, depth), max_size=3)
        return self._value(f, depth)

    def _message(
        self, desc: Descriptor, cls: type[Message] | None, depth: int
    ) -> st.SearchStrategy[Any]:
        if depth > self.max_depth:
            return st.none()
        from google.protobuf import message_factory

        make = cls or message_factory.GetMessageClass(desc)
        in_oneof = {f.name for o in desc.oneofs for f in o.fields}
        plain = {
            # A request's fields are set more often than not; nested ones, half the time.
            f.name: st.one_of(*[self._field(f, depth)] * (2 if depth == 0 else 1), st.none())
            for f in desc.fields
            if f.name not in in_oneof
        }
        oneofs = [
            st.one_of(
                st.none(),
                *(st.tuples(st.just(f.name), self._field(f, depth)) for f in o.fields),
            )
            for o in desc.oneofs
        ]

        def build(values: dict[str, Any], chosen: list[tuple[str, Any] | None]) -> Message:
            msg = make()
            items = [*values.items(), *(c for c in chosen if c is not None)]
            for name, value in items:
                if value is not None:
                    _set(msg, name, value)
            return msg

        return st.builds(build, st.fixed_dictionaries(plain), st.tuples(*oneofs).map(list))


def _set(msg: Message, name: str, value: Any) -> None:
    f = msg.DESCRIPTOR.fields_by_name[name]
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        target = getattr(msg, name)
        is_msg = f.message_type.fields_by_name["value"].message_type is not None
        for k, v in value.items():
            if is_msg:
                if v is not None:
                    target[k].CopyFrom(v)
            else:
                target[k] = v
    elif f.label == FieldDescriptor.LABEL_REPEATED:
        target = getattr(msg, name)
        for v in value:
            if f.message_type is not None:
                if v is not None:
                    target.add().CopyFrom(v)
            else:
                target.append(v)
    elif f.message_type is not None:
        getattr(msg, name).CopyFrom(value)
    else:
        setattr(msg, name, value)


# -- agent streams -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """One hand-driven agent stream: the certificate it presents (`as_center`'s, a
    fuzzing center's), a Hello naming `center_id` (its own, or another's), how a
    challenge is answered, then the rest. `proof` is "right" (signed by the key the broker
    admits for the center), "wrong" (a fresh key), "garbage" or "none" (our side closes
    instead); only a broker that runs --insecure challenges: with membership, TLS proved
    the key."""

    kind: str
    center_id: str
    as_center: str
    hello: agent_pb2.ConnectRequest
    proof: str
    bait: bool
    tail: tuple[agent_pb2.ConnectRequest, ...]

    def proof_for(self, world: World, nonce: bytes) -> agent_pb2.ConnectRequest | None:
        message = proof_message(self.center_id, nonce)
        if self.proof == "right":
            signature = world.center_key(self.center_id).sign(message)
        elif self.proof == "wrong":
            signature = new_key(self.center_id).sign(message)
        elif self.proof == "garbage":
            signature = b"\x00" * 64
        else:
            return None
        return agent_pb2.ConnectRequest(proof=agent_pb2.HelloProof(signature=signature))


def fuzz_center(center_id: str) -> types_pb2.CenterDescriptor:
    """A proper descriptor under any id (built as protobuf: the id need not be valid)."""
    proper = wire.center_to_proto(make_center("X", pools={"p": (BAIT_ACCELERATOR, 2, 500)}))
    proper.center_id = center_id
    return proper


def valid_offer(center_id: str, seq: int, free: int = 2) -> agent_pb2.ConnectRequest:
    at = now_ms()
    center = fuzz_center(center_id)
    for p in center.pools:
        p.devices_free = free
    return agent_pb2.ConnectRequest(
        offer=types_pb2.Offer(
            center_id=center_id, seq=seq, issued_at_ms=at, expires_at_ms=at + 30_000,
            pue_milli=center.pue_milli, grid_g_co2_per_kwh=center.grid_g_co2_per_kwh,
            pools=center.pools,
        )
    )  # fmt: skip


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
HUGE_INT_JSON = b'{"a":' + b"1" * 100_000 + b"}"
GARBAGE_ENTRIES = (
    b"", b"{}", b"[]", b"null", b"\xff\xfe", DEEP_JSON, HUGE_INT_JSON,
    b'{"record":{},"producer_sig":"AA=="}', b'{"a":1,"a":2}', b'{"x":1.5}',
)  # fmt: skip


def _record_ids() -> st.SearchStrategy[str]:
    return st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,20}", fullmatch=True))


@st.composite
def signed_entries(draw: st.DrawFn, world: World, center_id: str) -> bytes:
    """A usage record signed by the center (or another key), internally consistent (a
    careful liar's record), about a claim that is real or not."""
    producer = draw(st.sampled_from([center_id, *REAL_CENTERS, "ZZ"]))
    claim = draw(st.one_of(_pick(world.claim_ids), _record_ids()))
    job = draw(st.one_of(_pick(world.job_ids), _record_ids()))
    consumer = draw(st.sampled_from(["lab-a", "default", "FA", center_id, "bad tenant"]))
    start = now_ms() - draw(st.integers(0, 10 * 86_400_000))
    end = start + draw(st.one_of(st.integers(0, 3_600_000), st.sampled_from([864_000_000])))
    devices = draw(st.one_of(st.integers(1, 4), st.sampled_from([100, 2**20])))
    price = draw(st.one_of(st.sampled_from([500, 2000, 100_000]), st.integers(0, 10**9)))
    wall = (end - start) // 1000
    device_s = devices * wall
    energy = energy_wh(devices, 300, wall, 1250)
    try:
        record = UsageRecord(
            record_id=f"{producer}/{claim}", producer=producer, consumer=consumer, job_id=job,
            start_ms=start, end_ms=end, wall_s=wall, devices=devices, device_s=device_s,
            accelerator="ascend-910", energy_wh=energy, carbon_g=carbon_g(energy, 500),
            unit_price_minor=price, charge_minor=charge_minor(device_s, price),
        )  # fmt: skip
    except InvalidRecord:
        return b"{}"
    signer = draw(st.sampled_from(["own", "stranger", "agent"]))
    if signer == "own":
        key = world.center_key(center_id)
    elif signer == "agent" and producer in REAL_CENTERS:
        key = world.agent_key(producer)
    else:
        key = new_key(producer)
    return sign_records([record], key)[0].entry()


@dataclass(frozen=True, slots=True)
class BaitRun:
    """What the driver knows of the bait's claim when it resolves placeholders."""

    claim_id: str
    job_id: str
    devices: int
    started_at_ms: int | None = None
    ended_at_ms: int | None = None


def bait_record(world: World, center_id: str, run: BaitRun, variant: str) -> bytes:
    """The usage record for the bait's run, honest or with one lie (its derived figures
    made consistent again, as a careful liar would)."""
    start = run.started_at_ms or now_ms()
    end = max(run.ended_at_ms or now_ms(), start)
    devices, price, consumer = run.devices, 500, BAIT_TENANT
    record_id, producer, key = f"{center_id}/{run.claim_id}", center_id, None
    if variant == "devices":
        devices += 1
    elif variant == "price":
        price *= 10
    elif variant == "long":
        end += 10 * 86_400_000
    elif variant == "early":
        start -= 3_600_000
    elif variant == "consumer":
        consumer = "lab-b"
    elif variant == "record_id":
        record_id += "-again"
    elif variant == "producer":
        producer = "FA"
        record_id = f"FA/{run.claim_id}"
    elif variant == "stranger":
        key = new_key(center_id)
    wall = (end - start) // 1000
    device_s = devices * wall
    energy = energy_wh(devices, 300, wall, 1250)
    try:
        record = UsageRecord(
            record_id=record_id, producer=producer, consumer=consumer, job_id=run.job_id,
            start_ms=start, end_ms=end, wall_s=wall, devices=devices, device_s=device_s,
            accelerator=BAIT_ACCELERATOR, energy_wh=energy, carbon_g=carbon_g(energy, 500),
            unit_price_minor=price, charge_minor=charge_minor(device_s, price),
        )  # fmt: skip
    except InvalidRecord:
        return b"{}"
    return sign_records([record], key or world.center_key(center_id))[0].entry()


def resolve(
    message: agent_pb2.ConnectRequest, world: World, center_id: str, run: BaitRun | None
) -> agent_pb2.ConnectRequest:
    """`message` with the placeholders (CLAIM, JOB, RECORD) replaced by the bait's claim,
    job and usage record; left as they are when there is no bait."""
    if run is None:
        return message
    out = agent_pb2.ConnectRequest()
    out.CopyFrom(message)
    _replace(out, {CLAIM: run.claim_id, JOB: run.job_id})
    if out.HasField("usage") and out.usage.entry.startswith(RECORD):
        variant = out.usage.entry[len(RECORD) :].decode()
        out.usage.entry = bait_record(world, center_id, run, variant)
    return out


def _replace(msg: Message, values: dict[str, str]) -> None:
    for f, value in msg.ListFields():
        if f.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            if f.message_type.GetOptions().map_entry:
                continue
            items = value if f.label == FieldDescriptor.LABEL_REPEATED else [value]
            for item in items:
                _replace(item, values)
        elif f.cpp_type == FieldDescriptor.CPPTYPE_STRING and f.type != FieldDescriptor.TYPE_BYTES:
            if f.label == FieldDescriptor.LABEL_REPEATED:
                target = getattr(msg, f.name)
                for i, v in enumerate(target):
                    target[i] = values.get(v, v)
            elif value in values:
                setattr(msg, f.name, values[value])


def stream_messages(world: World, center_id: str) -> st.SearchStrategy[agent_pb2.ConnectRequest]:
    """Anything an agent may send after its Hello, leaning hostile."""
    generic = Messages(world)
    usage = st.one_of(
        _sampled(GARBAGE_ENTRIES),
        st.binary(max_size=64),
        signed_entries(world, center_id),
        st.sampled_from(RECORD_VARIANTS).map(lambda v: RECORD + v.encode()),
    ).map(lambda e: agent_pb2.ConnectRequest(usage=agent_pb2.UsageReport(entry=e)))
    offers = st.one_of(
        st.builds(lambda f: valid_offer(center_id, world.next_seq(), f), st.integers(-1, 3)),
        generic.of(types_pb2.Offer).map(lambda o: agent_pb2.ConnectRequest(offer=o)),
    )
    claim_replies = generic.of(agent_pb2.ClaimReply).map(
        lambda m: agent_pb2.ConnectRequest(claim_reply=m)
    )
    updates = generic.of(agent_pb2.JobUpdate).map(lambda m: agent_pb2.ConnectRequest(job_update=m))
    logs = generic.of(types_pb2.LogChunk).map(lambda m: agent_pb2.ConnectRequest(log=m))
    return st.one_of(
        offers,
        usage,
        claim_replies,
        updates,
        logs,
        generic.of(agent_pb2.ConnectRequest),
        st.builds(lambda: agent_pb2.ConnectRequest(hello=agent_pb2.Hello())),
    )


def held_claims(world: World) -> st.SearchStrategy[agent_pb2.HeldClaim]:
    """Claims a center says it holds at connect: often real ones (another center's),
    in a plausible state; sometimes anything."""
    plausible = st.builds(
        lambda claim, job, state, code: agent_pb2.HeldClaim(
            claim_id=claim, job_id=job, state=state, exit_code=code
        ),
        st.one_of(_pick(world.claim_ids), strings()),
        st.one_of(_pick(world.job_ids), strings()),
        st.sampled_from(
            [
                types_pb2.JOB_STATE_CLAIMED,
                types_pb2.JOB_STATE_RUNNING,
                types_pb2.JOB_STATE_SUCCEEDED,
                types_pb2.JOB_STATE_FAILED,
                types_pb2.JOB_STATE_CANCELLED,
            ]
        ),
        st.one_of(st.none(), st.integers(-1, 255)),
    )
    return st.one_of(plausible, Messages(world).of(agent_pb2.HeldClaim))  # type: ignore[arg-type]


def honest_run() -> st.SearchStrategy[list[agent_pb2.ConnectRequest]]:
    """What an honest center does with the bait's claim (accept, run, end, bill with a
    record that is honest or one lie), cut short anywhere."""

    def run(cut: int, exit_code: int, variant: str) -> list[agent_pb2.ConnectRequest]:
        steps = [
            agent_pb2.ConnectRequest(
                claim_reply=agent_pb2.ClaimReply(claim_id=CLAIM, accepted=True, device_indices=[0])
            ),
            agent_pb2.ConnectRequest(
                job_update=agent_pb2.JobUpdate(
                    claim_id=CLAIM, job_id=JOB, state=types_pb2.JOB_STATE_RUNNING
                )
            ),
            agent_pb2.ConnectRequest(
                job_update=agent_pb2.JobUpdate(
                    claim_id=CLAIM,
                    job_id=JOB,
                    state=types_pb2.JOB_STATE_SUCCEEDED
                    if exit_code == 0
                    else types_pb2.JOB_STATE_FAILED,
                    exit_code=exit_code,
                )
            ),
            agent_pb2.ConnectRequest(usage=agent_pb2.UsageReport(entry=RECORD + variant.encode())),
        ]
        return steps[:cut]

    return st.builds(
        run, st.integers(1, 4), st.sampled_from([0, 1]), st.sampled_from(RECORD_VARIANTS)
    )


@st.composite
def stream_plans(draw: st.DrawFn, world: World) -> StreamPlan:
    """A valid prefix (a proper Hello with the center's certified key, perhaps an offer)
    then hostile messages; or a hostile Hello: a takeover of a real center (a fuzzing
    center's certificate, the real center's name), a random descriptor."""
    kind = "proper"
    if draw(st.booleans(), label="hostile hello"):
        kind = draw(st.sampled_from(["takeover", "random"]))
    if kind == "proper":
        center_id = draw(st.sampled_from(FUZZ_CENTERS))
        held = draw(st.one_of(st.just([]), st.lists(held_claims(world), max_size=2)), label="held")
        hello = agent_pb2.Hello(
            center=fuzz_center(center_id),
            agent_version="fuzz",
            usage_key=world.center_key(center_id).verifier.text(),
            held=held,
        )
        proof = "right"
        as_center = center_id
    elif kind == "takeover":
        center_id = draw(st.sampled_from(REAL_CENTERS))
        key = draw(st.sampled_from(["empty", "fresh", "public"]))
        usage_key = {
            "empty": "",
            "fresh": new_key(center_id).verifier.text(),
            "public": world.agent_key(center_id).verifier.text(),
        }[key]
        hello = agent_pb2.Hello(center=fuzz_center(center_id), usage_key=usage_key)
        proof = draw(st.sampled_from(["wrong", "garbage", "none"]))
        as_center = draw(st.sampled_from(FUZZ_CENTERS), label="certificate of")
    else:
        hello = draw(Messages(world).of(agent_pb2.Hello))  # type: ignore[assignment]
        center_id = hello.center.center_id
        proof = draw(st.sampled_from(["right", "wrong", "none"]))
        # Its own certificate when it names a fuzzing center (so that some get past the
        # name check), else a fuzzing center's.
        as_center = (
            center_id
            if center_id in FUZZ_CENTERS
            else draw(st.sampled_from(FUZZ_CENTERS), label="certificate of")
        )
    prefix: list[agent_pb2.ConnectRequest] = []
    bait = kind == "proper" and draw(st.booleans(), label="bait")
    if bait or (kind == "proper" and draw(st.booleans())):
        prefix.append(valid_offer(center_id, world.next_seq()))
    if bait:
        prefix += draw(honest_run(), label="run")
    tail = draw(st.lists(stream_messages(world, center_id), min_size=0 if bait else 1, max_size=4))
    return StreamPlan(
        kind=kind,
        center_id=center_id,
        as_center=as_center,
        hello=agent_pb2.ConnectRequest(hello=hello),
        proof=proof,
        bait=bait,
        tail=(*prefix, *tail),
    )
