"""The dashboard's web application (Starlette): the page, its static files, ECharts, the
JSON API the page calls, and server-sent events for live updates.

    GET  /                       the page (`?token=...` opens a session, then redirects)
    GET  /static/...             the page's script and style; /vendor/echarts.min.js
    GET  /api/overview?period=1h centers, hubs, totals and flows between hubs
    GET  /api/centers/{id}       one center's figures and its running jobs
    GET  /api/timeseries?window=1h
    GET  /api/rounds?limit=10    the matcher's latest rounds, reasons grouped
    GET  /api/policy             the policy in force, its changes, allocation before/after
    POST /api/policy             a new policy (a session opened with the token only)
    GET  /api/money?period=YYYY-MM   net positions and transfers (the signed statement)
    GET  /api/statement?period=..&party=..  the signed statement itself, as the ledger signed it
    GET  /api/checkpoint         the ledger's latest signed checkpoint
    GET  /api/events             server-sent events: `update` with a version on each change

Errors are JSON `{"error": "..."}` with 400 (bad input), 403 (no session), 404, 502
(the broker refused or failed) or 503 (the broker is unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from core.errors import (
    IcxError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from dashboard.auth import COOKIE, Sessions
from dashboard.figures import BrokerFigures
from dashboard.live import Watcher
from dashboard.periods import DEFAULT_PERIOD, duration_ms, month_of, step_for

log = logging.getLogger("icx.dashboard")

STATIC = Path(__file__).parent / "static"
# How long an events stream waits for a change before a comment keeps it open.
KEEPALIVE_S = 15.0
MAX_POLICY_BYTES = 256 * 1024

Handler = Callable[[Request], Awaitable[Response]]


def _status(exc: IcxError) -> int:
    if isinstance(exc, InvalidArgument):
        return 400
    if isinstance(exc, PermissionDenied | Unauthenticated):
        return 403
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Unavailable):
        return 503
    return 502


def _api(handler: Handler) -> Handler:
    """Known errors become JSON with a status code; nothing else is caught here."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except IcxError as exc:
            return JSONResponse({"error": str(exc)}, status_code=_status(exc))

    return wrapped


def _limit(request: Request, default: int, highest: int) -> int:
    text = request.query_params.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= highest:
        raise InvalidArgument(f"limit must be 1..{highest}, got {text!r}")
    return int(text)


def build_app(
    figures: BrokerFigures,
    sessions: Sessions,
    echarts: Path,
    *,
    poll_s: float = 1.0,
    on_startup: Callable[[], Awaitable[None]] | None = None,
) -> Starlette:
    """The application over `figures` (the broker, through the typed client)."""
    watcher = Watcher(figures.pulse, poll_s=poll_s)
    index_html = (STATIC / "index.html").read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None:
            session = sessions.open(token)
            if session is None:
                return PlainTextResponse("icx dashboard: that token is not this run's\n", 403)
            reply = RedirectResponse("/", status_code=303)
            reply.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
            log.info("a browser opened a session with the token")
            return reply
        signed_in = "true" if sessions.valid(request.cookies.get(COOKIE)) else "false"
        return Response(
            index_html.replace("__SIGNED_IN__", signed_in),
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def echarts_js(request: Request) -> Response:
        return FileResponse(echarts, media_type="text/javascript")

    @_api
    async def overview(request: Request) -> Response:
        period = duration_ms(request.query_params.get("period", DEFAULT_PERIOD))
        return JSONResponse(await figures.overview(period))

    @_api
    async def center(request: Request) -> Response:
        period = duration_ms(request.query_params.get("period", DEFAULT_PERIOD))
        return JSONResponse(await figures.center(request.path_params["center_id"], period))

    @_api
    async def timeseries(request: Request) -> Response:
        window = duration_ms(request.query_params.get("window", DEFAULT_PERIOD), field="window")
        return JSONResponse(await figures.timeseries(window, step_for(window)))

    @_api
    async def rounds(request: Request) -> Response:
        return JSONResponse(await figures.rounds(_limit(request, 10, 500)))

    @_api
    async def policy(request: Request) -> Response:
        window = duration_ms(request.query_params.get("window", DEFAULT_PERIOD), field="window")
        return JSONResponse(await figures.policy_view(window))

    @_api
    async def set_policy(request: Request) -> Response:
        if not sessions.authorised(
            request.cookies.get(COOKIE), request.headers.get("authorization")
        ):
            log.warning("refused a policy change without a session (from %s)", _peer(request))
            return JSONResponse(
                {"error": "changing policy needs the dashboard's token: open the URL it printed"},
                status_code=403,
            )
        body = await request.body()
        if len(body) > MAX_POLICY_BYTES:
            raise InvalidArgument(f"the request must be at most {MAX_POLICY_BYTES} bytes")
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"the request must be JSON: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("policy"), dict):
            raise InvalidArgument('the request must be {"policy": {...}, "comment": "..."}')
        comment = doc.get("comment", "")
        if not isinstance(comment, str):
            raise InvalidArgument("comment must be a string")
        changed = await figures.set_policy(doc["policy"], comment)
        log.info("policy changed to version %s by %s", changed["version"], changed["set_by"])
        await watcher.poll_once()
        return JSONResponse(changed)

    @_api
    async def money(request: Request) -> Response:
        period = request.query_params.get("period") or month_of()
        return JSONResponse(await figures.money(period))

    @_api
    async def statement(request: Request) -> Response:
        period = request.query_params.get("period") or month_of()
        party = request.query_params.get("party", "")
        signed = await figures.statement(period, party)
        name = f"statement-{period}{'-' + party if party else ''}.json"
        return Response(
            signed,
            media_type="application/json",
            headers={"Content-Disposition": f'inline; filename="{name}"'},
        )

    @_api
    async def checkpoint(request: Request) -> Response:
        return PlainTextResponse(await figures.checkpoint())

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            seen = -1
            while not await request.is_disconnected():
                version = await watcher.wait_newer(seen, KEEPALIVE_S)
                if version == seen:
                    yield ": keep-alive\n\n"
                    continue
                seen = version
                yield f"event: update\ndata: {json.dumps({'version': version})}\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if on_startup is not None:
            await on_startup()
        task = asyncio.create_task(watcher.run(), name="dashboard-watcher")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await figures.close()

    routes = [
        Route("/", index),
        Route("/vendor/echarts.min.js", echarts_js),
        Route("/api/overview", overview),
        Route("/api/centers/{center_id}", center),
        Route("/api/timeseries", timeseries),
        Route("/api/rounds", rounds),
        Route("/api/policy", policy, methods=["GET"]),
        Route("/api/policy", set_policy, methods=["POST"]),
        Route("/api/money", money),
        Route("/api/statement", statement),
        Route("/api/checkpoint", checkpoint),
        Route("/api/events", events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.watcher = watcher
    return app


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown"
