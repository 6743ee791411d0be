"""NationalService messages to core.national values and back: the one place they meet
(as core.wire is for the other services). Imported by the broker's servicer and the
client only."""

from __future__ import annotations

from core.national import (
    CenterDetail,
    CenterFigures,
    Figures,
    Flow,
    HubFigures,
    Overview,
    PolicyVersion,
    PoolFigures,
    ReasonCount,
    RoundSummary,
    RunningJob,
    TimeSeries,
    TimeStep,
)
from icx.v1 import national_pb2 as pb


def figures_to_proto(f: Figures) -> pb.Figures:
    return pb.Figures(
        centers=f.centers,
        centers_live=f.centers_live,
        devices_total=f.devices_total,
        devices_busy=f.devices_busy,
        queue_length=f.queue_length,
        jobs_running=f.jobs_running,
        jobs_done=f.jobs_done,
        device_seconds=f.device_seconds,
        utilisation=f.utilisation,
        energy_wh=f.energy_wh,
        carbon_g=f.carbon_g,
        spend_minor=f.spend_minor,
    )


def figures_from_proto(m: pb.Figures) -> Figures:
    return Figures(
        centers=m.centers,
        centers_live=m.centers_live,
        devices_total=m.devices_total,
        devices_busy=m.devices_busy,
        queue_length=m.queue_length,
        jobs_running=m.jobs_running,
        jobs_done=m.jobs_done,
        device_seconds=m.device_seconds,
        utilisation=m.utilisation,
        energy_wh=m.energy_wh,
        carbon_g=m.carbon_g,
        spend_minor=m.spend_minor,
    )


def center_to_proto(c: CenterFigures) -> pb.CenterFigures:
    return pb.CenterFigures(
        center_id=c.center_id,
        name=c.name,
        region=c.region,
        latitude=c.latitude,
        longitude=c.longitude,
        broker=c.broker,
        live=c.live,
        pools=[
            pb.PoolFigures(
                pool_id=p.pool_id,
                accelerator=p.accelerator,
                devices_total=p.devices_total,
                devices_busy=p.devices_busy,
                price_minor_per_device_hour=p.price_minor_per_device_hour,
                power_w=p.power_w,
            )
            for p in c.pools
        ],
        price_minor_per_device_hour=c.price_minor_per_device_hour,
        pue_milli=c.pue_milli,
        grid_g_co2_per_kwh=c.grid_g_co2_per_kwh,
        figures=figures_to_proto(c.figures),
    )


def center_from_proto(m: pb.CenterFigures) -> CenterFigures:
    return CenterFigures(
        center_id=m.center_id,
        name=m.name,
        region=m.region,
        latitude=m.latitude,
        longitude=m.longitude,
        broker=m.broker,
        live=m.live,
        pools=tuple(
            PoolFigures(
                pool_id=p.pool_id,
                accelerator=p.accelerator,
                devices_total=p.devices_total,
                devices_busy=p.devices_busy,
                price_minor_per_device_hour=p.price_minor_per_device_hour,
                power_w=p.power_w,
            )
            for p in m.pools
        ),
        price_minor_per_device_hour=m.price_minor_per_device_hour,
        pue_milli=m.pue_milli,
        grid_g_co2_per_kwh=m.grid_g_co2_per_kwh,
        figures=figures_from_proto(m.figures),
    )


def overview_to_proto(o: Overview) -> pb.GetOverviewResponse:
    return pb.GetOverviewResponse(
        as_of_ms=o.as_of_ms,
        period_ms=o.period_ms,
        centers=[center_to_proto(c) for c in o.centers],
        hubs=[pb.HubFigures(region=h.region, figures=figures_to_proto(h.figures)) for h in o.hubs],
        totals=figures_to_proto(o.totals),
        flows=[
            pb.Flow(
                from_region=f.from_region,
                to_region=f.to_region,
                jobs=f.jobs,
                device_seconds=f.device_seconds,
            )
            for f in o.flows
        ],
    )


def overview_from_proto(m: pb.GetOverviewResponse) -> Overview:
    return Overview(
        as_of_ms=m.as_of_ms,
        period_ms=m.period_ms,
        centers=tuple(center_from_proto(c) for c in m.centers),
        hubs=tuple(
            HubFigures(region=h.region, figures=figures_from_proto(h.figures)) for h in m.hubs
        ),
        totals=figures_from_proto(m.totals),
        flows=tuple(
            Flow(
                from_region=f.from_region,
                to_region=f.to_region,
                jobs=f.jobs,
                device_seconds=f.device_seconds,
            )
            for f in m.flows
        ),
    )


def _running_to_proto(r: RunningJob) -> pb.RunningJob:
    return pb.RunningJob(
        job_id=r.job_id,
        tenant=r.tenant,
        pool_id=r.pool_id,
        accelerator=r.accelerator,
        devices=r.devices,
        started_at_ms=r.started_at_ms,
        home_region=r.home_region,
        name=r.name,
    )


def center_detail_to_proto(d: CenterDetail) -> pb.GetCenterResponse:
    return pb.GetCenterResponse(
        as_of_ms=d.as_of_ms,
        period_ms=d.period_ms,
        center=center_to_proto(d.center),
        running=[_running_to_proto(r) for r in d.running],
    )


def center_detail_from_proto(m: pb.GetCenterResponse) -> CenterDetail:
    return CenterDetail(
        as_of_ms=m.as_of_ms,
        period_ms=m.period_ms,
        center=center_from_proto(m.center),
        running=tuple(
            RunningJob(
                job_id=r.job_id,
                tenant=r.tenant,
                pool_id=r.pool_id,
                accelerator=r.accelerator,
                devices=r.devices,
                started_at_ms=r.started_at_ms,
                home_region=r.home_region,
                name=r.name,
            )
            for r in m.running
        ),
    )


def series_to_proto(s: TimeSeries) -> pb.GetTimeSeriesResponse:
    steps = []
    for t in s.steps:
        step = pb.TimeStep(
            start_ms=t.start_ms,
            device_seconds=t.device_seconds,
            utilisation=t.utilisation,
            jobs_started=t.jobs_started,
            jobs_finished=t.jobs_finished,
            energy_wh=t.energy_wh,
            carbon_g=t.carbon_g,
            spend_minor=t.spend_minor,
        )
        if t.queue_length is not None:
            step.queue_length = t.queue_length
        steps.append(step)
    return pb.GetTimeSeriesResponse(
        as_of_ms=s.as_of_ms, step_ms=s.step_ms, devices_total=s.devices_total, steps=steps
    )


def series_from_proto(m: pb.GetTimeSeriesResponse) -> TimeSeries:
    return TimeSeries(
        as_of_ms=m.as_of_ms,
        step_ms=m.step_ms,
        devices_total=m.devices_total,
        steps=tuple(
            TimeStep(
                start_ms=t.start_ms,
                device_seconds=t.device_seconds,
                utilisation=t.utilisation,
                queue_length=t.queue_length if t.HasField("queue_length") else None,
                jobs_started=t.jobs_started,
                jobs_finished=t.jobs_finished,
                energy_wh=t.energy_wh,
                carbon_g=t.carbon_g,
                spend_minor=t.spend_minor,
            )
            for t in m.steps
        ),
    )


def round_to_proto(r: RoundSummary) -> pb.RoundSummary:
    m = pb.RoundSummary(
        number=r.number,
        at_ms=r.at_ms,
        objective=r.objective,
        solver=r.solver,
        solve_seconds=r.solve_seconds,
        pools=r.pools,
        jobs_considered=r.jobs_considered,
        jobs_placed=r.jobs_placed,
        jobs_waiting=r.jobs_waiting,
        waiting=[
            pb.ReasonCount(reason=w.reason, example=w.example, jobs=w.jobs) for w in r.waiting
        ],
    )
    if r.bound is not None:
        m.bound = r.bound
    if r.gap is not None:
        m.gap = r.gap
    return m


def round_from_proto(m: pb.RoundSummary) -> RoundSummary:
    return RoundSummary(
        number=m.number,
        at_ms=m.at_ms,
        objective=m.objective,
        bound=m.bound if m.HasField("bound") else None,
        gap=m.gap if m.HasField("gap") else None,
        solver=m.solver,
        solve_seconds=m.solve_seconds,
        pools=m.pools,
        jobs_considered=m.jobs_considered,
        jobs_placed=m.jobs_placed,
        jobs_waiting=m.jobs_waiting,
        waiting=tuple(
            ReasonCount(reason=w.reason, example=w.example, jobs=w.jobs) for w in m.waiting
        ),
    )


def policy_to_proto(p: PolicyVersion) -> pb.Policy:
    return pb.Policy(
        version=p.version,
        policy_json=p.policy_json,
        set_by=p.set_by,
        set_at_ms=p.set_at_ms,
        comment=p.comment,
    )


def policy_from_proto(m: pb.Policy) -> PolicyVersion:
    return PolicyVersion(
        version=m.version,
        policy_json=m.policy_json,
        set_by=m.set_by,
        set_at_ms=m.set_at_ms,
        comment=m.comment,
    )
