"""NationalService: the coordinator's figures and policy (proto/icx/v1/national.proto).
Each method converts (core.national_wire), asks the Broker's NationalView or PolicyBook,
converts back; errors map to status codes as in broker.service."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from broker import authz
from broker.core import Broker
from broker.service import unary
from core import national_wire as nw
from core.national import limit_or_default
from icx.v1 import national_pb2 as pb
from icx.v1 import national_pb2_grpc

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class NationalServicer(national_pb2_grpc.NationalServiceServicer):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @unary
    async def GetOverview(self, request: pb.GetOverviewRequest, context: Ctx) -> Any:
        return nw.overview_to_proto(self.broker.national.overview(request.period_ms))

    @unary
    async def GetCenter(self, request: pb.GetCenterRequest, context: Ctx) -> Any:
        detail = self.broker.national.center(request.center_id, request.period_ms)
        return nw.center_detail_to_proto(detail)

    @unary
    async def GetTimeSeries(self, request: pb.GetTimeSeriesRequest, context: Ctx) -> Any:
        series = self.broker.national.time_series(request.window_ms, request.step_ms)
        return nw.series_to_proto(series)

    @unary
    async def ListRounds(self, request: pb.ListRoundsRequest, context: Ctx) -> Any:
        rounds = self.broker.national.latest_rounds(limit_or_default(request.limit))
        return pb.ListRoundsResponse(rounds=[nw.round_to_proto(r) for r in rounds])

    @unary
    async def GetPolicy(self, request: pb.GetPolicyRequest, context: Ctx) -> Any:
        return pb.GetPolicyResponse(policy=nw.policy_to_proto(self.broker.policy.current))

    @unary
    async def SetPolicy(self, request: pb.SetPolicyRequest, context: Ctx) -> Any:
        who = authz.caller()
        name = who.member.name if who.member is not None else f"{who.tenant} (unauthenticated)"
        change = await self.broker.policy.set(request.policy_json, request.comment, name)
        return pb.SetPolicyResponse(policy=nw.policy_to_proto(change))

    @unary
    async def ListPolicyChanges(self, request: pb.ListPolicyChangesRequest, context: Ctx) -> Any:
        changes = self.broker.policy.history(limit_or_default(request.limit))
        return pb.ListPolicyChangesResponse(changes=[nw.policy_to_proto(c) for c in changes])
