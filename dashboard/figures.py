"""What the dashboard shows, read from the broker through the typed client
(`AsyncBrokerClient`: NationalService for the figures, rounds and policy; LedgerService
for the money) and turned into the JSON the page and the reports read: the client's
values as they are (field names as in proto/icx/v1/national.proto), plus what is
derived here (hub positions on the map, the allocation before and after a policy
change, the money of the signed statement).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from core.errors import InvalidArgument, Unavailable
from dashboard.live import Pulse, pulse_of

if TYPE_CHECKING:
    from client import AsyncBrokerClient
    from ledger import VerifierKey

# The four western hubs of the East-Data-West-Computing plan (Inner Mongolia, Guizhou,
# Gansu, Ningxia): where the east-to-west incentive wants work to go.
WESTERN_HUBS = ("IM", "GZ", "GS", "NX")

JsonDict = dict[str, Any]
T = TypeVar("T")
log = logging.getLogger("icx.dashboard")


def as_json(value: Any) -> Any:
    """A client value (frozen dataclasses, tuples) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    return value


def hub_positions(centers: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Each hub's place on the map: the mean position of its centers that have one."""
    sums: dict[str, list[float]] = {}
    for c in centers:
        if c["latitude"] == 0.0 and c["longitude"] == 0.0:
            continue  # a peer's center: its summary names no coordinates
        acc = sums.setdefault(c["region"], [0.0, 0.0, 0.0])
        acc[0] += c["longitude"]
        acc[1] += c["latitude"]
        acc[2] += 1
    return {hub: [round(x / n, 4), round(y / n, 4)] for hub, (x, y, n) in sorted(sums.items())}


def allocation(overview: Mapping[str, Any]) -> JsonDict:
    """Where the work of a period went: device-hours, carbon per device-hour (g), and the
    share of device-hours in the western hubs."""
    device_s = sum(h["figures"]["device_seconds"] for h in overview["hubs"])
    carbon_g = sum(h["figures"]["carbon_g"] for h in overview["hubs"])
    west_s = sum(
        h["figures"]["device_seconds"] for h in overview["hubs"] if h["region"] in WESTERN_HUBS
    )
    return _allocation(device_s, carbon_g, west_s)


def _allocation(device_s: int, carbon_g: int, west_s: int) -> JsonDict:
    hours = device_s / 3600
    return {
        "device_hours": round(hours, 3),
        "carbon_g_per_device_hour": round(carbon_g / hours, 1) if hours else None,
        "western_share": round(west_s / device_s, 4) if device_s else None,
    }


def allocation_between(longer: Mapping[str, Any], shorter: Mapping[str, Any]) -> JsonDict:
    """The allocation of the time in `longer`'s period but not in `shorter`'s (both end
    now): their sums subtracted."""

    def sums(o: Mapping[str, Any]) -> tuple[int, int, int]:
        hubs = o["hubs"]
        return (
            sum(h["figures"]["device_seconds"] for h in hubs),
            sum(h["figures"]["carbon_g"] for h in hubs),
            sum(h["figures"]["device_seconds"] for h in hubs if h["region"] in WESTERN_HUBS),
        )

    a, b = sums(longer), sums(shorter)
    return _allocation(*(max(0, x - y) for x, y in zip(a, b, strict=True)))


def money_of(body: Mapping[str, Any], period: str, key_id: str) -> JsonDict:
    """The page's money from a verified statement body: positions, transfers, region
    flows, totals, and what it is bound to."""
    parties = [dict(p) for p in body.get("parties", [])]
    return {
        "period": period,
        "currency": body["currency"],
        "records": body["records"],
        "checkpoint": body["checkpoint"],
        "signed_by": key_id,
        "parties": parties,
        "transfers": [dict(t) for t in body.get("transfers", [])],
        "regions": [
            {k: v for k, v in dict(f).items() if k != "entries"} | {"records": len(f["entries"])}
            for f in body.get("regions", [])
        ],
        "totals": {
            "paid_minor": sum(p["paid_minor"] for p in parties),
            "received_minor": sum(p["received_minor"] for p in parties),
            "transfers_minor": sum(t["amount_minor"] for t in body.get("transfers", [])),
            "energy_wh": sum(p["energy_wh"] for p in parties if p["device_s_produced"]),
            "carbon_g": sum(p["carbon_g"] for p in parties if p["device_s_produced"]),
        },
    }


Call = Callable[["AsyncBrokerClient"], Awaitable[T]]


class BrokerFigures:
    """The broker's figures as JSON, through one client (as the coordinator).

    With `reconnect` (which opens a client to the broker to call now: the active one of a
    region's brokers), a call that finds the broker unavailable opens a new client and is
    read once more: a dashboard runs for days, across a failover to a standby. A policy
    change is not sent twice (it might have been applied); it fails, and the next call
    goes to the new client."""

    def __init__(
        self,
        client: AsyncBrokerClient,
        *,
        reconnect: Callable[[], Awaitable[AsyncBrokerClient]] | None = None,
    ) -> None:
        self.client = client
        self._reconnect = reconnect
        self._key: VerifierKey | None = None

    async def close(self) -> None:
        await self.client.close()

    async def _read(self, call: Call[T]) -> T:
        try:
            return await call(self.client)
        except Unavailable:
            if not await self._switch():
                raise
        return await call(self.client)

    async def _switch(self) -> bool:
        """A new client from `reconnect`; False without one."""
        if self._reconnect is None:
            return False
        fresh = await self._reconnect()
        old, self.client = self.client, fresh
        await old.close()
        if fresh.address != old.address:
            log.info("the broker is now %s (was %s)", fresh.address, old.address)
        return True

    async def pulse(self, overview: JsonDict | None = None) -> Pulse:
        """What the watcher compares: from `overview` (the last hour's) when given."""
        if overview is None:
            overview = await self.overview(3_600_000)
        rounds = await self._read(lambda c: c.rounds(limit=1))
        policy = await self._read(lambda c: c.policy())
        return pulse_of(overview, rounds[0].number if rounds else 0, policy.version)

    async def overview(self, period_ms: int) -> JsonDict:
        out: JsonDict = as_json(await self._read(lambda c: c.overview(period_ms=period_ms)))
        out["hub_positions"] = hub_positions(out["centers"])
        return out

    async def center(self, center_id: str, period_ms: int) -> JsonDict:
        figures = await self._read(lambda c: c.center_figures(center_id, period_ms=period_ms))
        out: JsonDict = as_json(figures)
        return out

    async def timeseries(self, window_ms: int, step_ms: int) -> JsonDict:
        series = await self._read(lambda c: c.time_series(window_ms=window_ms, step_ms=step_ms))
        out: JsonDict = as_json(series)
        return out

    async def rounds(self, limit: int) -> JsonDict:
        return {"rounds": as_json(await self._read(lambda c: c.rounds(limit=limit)))}

    async def policy_view(
        self,
        window_ms: int,
        overview: Callable[[int], Awaitable[JsonDict]] | None = None,
    ) -> JsonDict:
        """The policy in force (parsed), its history, and the allocation in the `window_ms`
        before its latest change and since (or over the last window when never set), from
        `overview` (a period's overview, perhaps one already read) or the broker's."""
        read_overview = overview or self.overview
        policy = await self._read(lambda c: c.policy())
        changes = await self._read(lambda c: c.policy_history(limit=20))
        out: JsonDict = {
            **as_json(policy),
            "policy": json.loads(policy.policy_json) if policy.policy_json else {},
            "changes": [
                {k: v for k, v in as_json(c).items() if k != "policy_json"} for c in changes
            ],
            "western_hubs": list(WESTERN_HUBS),
            "window_ms": window_ms,
        }
        now_ms = int(time.time() * 1000)
        if policy.version and policy.set_at_ms:
            since_ms = max(1_000, now_ms - policy.set_at_ms)
            after = await read_overview(since_ms)
            longer = await read_overview(min(since_ms + window_ms, 366 * 86_400_000))
            out["allocation"] = {
                "before": allocation_between(longer, after),
                "after": allocation(after),
                "changed_at_ms": policy.set_at_ms,
            }
        else:
            out["allocation"] = {"now": allocation(await read_overview(window_ms))}
        return out

    async def set_policy(self, policy: Mapping[str, Any], comment: str) -> JsonDict:
        if len(comment) > 500:
            raise InvalidArgument(f"comment must be at most 500 characters, got {len(comment)}")
        try:
            changed = await self.client.set_policy(json.dumps(policy), comment=comment)
        except Unavailable:
            await self._switch()
            raise
        out: JsonDict = as_json(changed)
        return out

    async def _log_key(self) -> VerifierKey:
        if self._key is None:
            self._key = await self._read(lambda c: c.log_key())
        return self._key

    async def money(self, period: str) -> JsonDict:
        """The period's settlement as the ledger signed it, checked against its key."""
        from ledger import verify_statement

        key = await self._log_key()
        body = verify_statement(await self._read(lambda c: c.statement(period)), key)
        return money_of(body, period, key.key_id)

    async def statement(self, period: str, party: str) -> bytes:
        return await self._read(lambda c: c.statement(period, party=party))

    async def checkpoint(self) -> str:
        return await self._read(lambda c: c.checkpoint())
