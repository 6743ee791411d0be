"""The dashboard's web application (Starlette): the page, its static files, ECharts, the
JSON API the page calls, and server-sent events for live updates.

    GET  /                       the page (`?token=...` opens a session, then redirects;
                                 without a session it says to open the token URL)
    GET  /static/...             the page's script and style; /vendor/echarts.min.js
    GET  /api/overview?period=1h centers, hubs, totals and flows between hubs
    GET  /api/centers/{id}       one center's figures and its running jobs
    GET  /api/timeseries?window=1h
    GET  /api/rounds?limit=10    the matcher's latest rounds, reasons grouped
    GET  /api/policy             the policy in force, its changes, allocation before/after
    POST /api/policy             a new policy: JSON only, from the dashboard's own origin,
                                 with the session's CSRF header (or the token header)
    GET  /api/money?period=YYYY-MM   net positions and transfers (the signed statement)
    GET  /api/statement?period=..&party=..  the signed statement itself, as the ledger signed it
    GET  /api/checkpoint         the ledger's latest signed checkpoint
    GET  /api/events             server-sent events: `update` with a version on each change

Every /api/* path (the events too) needs a session opened with the token, or the token in
an `Authorization: token ...` header; without one it answers 403 and nothing else. A Host
header that is not the listen host, localhost, 127.0.0.1, ::1 or an `--allow-host` is
refused with 400 (DNS rebinding). Errors are JSON `{"error": "..."}` with 400 (bad
input), 403 (no session, another origin), 404, 415 (not JSON), 502 (the broker refused
or failed) or 503 (the broker is unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
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
from dashboard.answers import Answers
from dashboard.auth import COOKIE, CSRF_HEADER, Sessions
from dashboard.figures import BrokerFigures, JsonDict
from dashboard.live import Pulse, Watcher
from dashboard.periods import DEFAULT_PERIOD, duration_ms, month_of, step_for

log = logging.getLogger("icx.dashboard")

STATIC = Path(__file__).parent / "static"
# How long an events stream waits for a change before a comment keeps it open.
KEEPALIVE_S = 15.0
MAX_POLICY_BYTES = 256 * 1024

Handler = Callable[[Request], Awaitable[Response]]
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
NO_SESSION = (
    "no session: open the URL with the token that `icx dashboard` printed "
    "(or send `Authorization: token TOKEN`)"
)


def host_names(listen_host: str, allowed: Iterable[str] = ()) -> list[str]:
    """The Host header names the dashboard answers: the listen host, the loopback names and
    `allowed`, IPv6 literals in brackets as a Host header carries them."""
    names = dict.fromkeys([listen_host, *LOCAL_HOSTS, *allowed])
    return [f"[{n}]" if ":" in n and not n.startswith("[") else n.lower() for n in names]


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
    hosts: Iterable[str] | None = None,
    poll_s: float = 1.0,
    on_startup: Callable[[], Awaitable[None]] | None = None,
) -> Starlette:
    """The application over `figures` (the broker, through the typed client), answering
    only requests whose Host header names one of `hosts` (see `host_names`; by default the
    loopback names)."""
    answers = Answers(poll_s)
    default_ms = duration_ms(DEFAULT_PERIOD)

    async def read_pulse() -> Pulse:
        """The watcher's poll: the default period's overview, kept as the pages' answer."""
        overview = await figures.overview(default_ms)
        answers.store(("overview", default_ms), overview, answers.max_age_s(default_ms))
        return await figures.pulse(overview)

    watcher = Watcher(
        read_pulse,
        poll_s=poll_s,
        on_change=lambda: answers.clear(keep=("overview", default_ms)),
    )

    async def overview_of(period_ms: int) -> JsonDict:
        answer = await answers.get(
            ("overview", period_ms),
            answers.max_age_s(period_ms),
            lambda: figures.overview(period_ms),
        )
        value: JsonDict = answer.value
        return value

    index_html = (STATIC / "index.html").read_text(encoding="utf-8")

    def with_session(handler: Handler) -> Handler:
        """403 with nothing else unless the request has a session or the token header."""

        async def guarded(request: Request) -> Response:
            header = request.headers.get("authorization")
            if not sessions.authorised(request.cookies.get(COOKIE), header):
                wrong = header is not None and header.lower().startswith("token ")
                message = "that token is not this run's" if wrong else NO_SESSION
                return JSONResponse({"error": message}, status_code=403)
            return await handler(request)

        return guarded

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
        session = request.cookies.get(COOKIE)
        signed_in = "true" if sessions.valid(session) else "false"
        page = index_html.replace("__SIGNED_IN__", signed_in)
        return Response(
            page.replace("__CSRF__", sessions.csrf_of(session)),
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def echarts_js(request: Request) -> Response:
        return FileResponse(echarts, media_type="text/javascript")

    @_api
    async def overview(request: Request) -> Response:
        period = duration_ms(request.query_params.get("period", DEFAULT_PERIOD))
        answer = await answers.get(
            ("overview", period), answers.max_age_s(period), lambda: figures.overview(period)
        )
        return answer.response(request)

    @_api
    async def center(request: Request) -> Response:
        period = duration_ms(request.query_params.get("period", DEFAULT_PERIOD))
        return JSONResponse(await figures.center(request.path_params["center_id"], period))

    @_api
    async def timeseries(request: Request) -> Response:
        window = duration_ms(request.query_params.get("window", DEFAULT_PERIOD), field="window")
        answer = await answers.get(
            ("timeseries", window),
            answers.max_age_s(window),
            lambda: figures.timeseries(window, step_for(window)),
        )
        return answer.response(request)

    @_api
    async def rounds(request: Request) -> Response:
        return JSONResponse(await figures.rounds(_limit(request, 10, 500)))

    @_api
    async def policy(request: Request) -> Response:
        window = duration_ms(request.query_params.get("window", DEFAULT_PERIOD), field="window")

        async def overview(period_ms: int) -> JsonDict:
            # The window's overview is the page's own; the others are asked once per view.
            if period_ms == window:
                return await overview_of(period_ms)
            return await figures.overview(period_ms)

        answer = await answers.get(
            ("policy", window),
            answers.max_age_s(window),
            lambda: figures.policy_view(window, overview=overview),
        )
        return answer.response(request)

    @_api
    async def set_policy(request: Request) -> Response:
        # The order matters only for the reason given: each check alone refuses.
        origin = request.headers.get("origin")
        if origin is not None and origin != _own_origin(request):
            log.warning("refused a policy change from origin %s (from %s)", origin, _peer(request))
            return JSONResponse(
                {"error": f"policy changes are taken only from this page, not from {origin}"},
                status_code=403,
            )
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "application/json":
            return JSONResponse(
                {"error": f"the request must be Content-Type: application/json, got {kind!r}"},
                status_code=415,
            )
        if not sessions.may_change(
            request.cookies.get(COOKIE),
            request.headers.get("authorization"),
            request.headers.get(CSRF_HEADER),
        ):
            log.warning("refused a policy change without a session (from %s)", _peer(request))
            return JSONResponse(
                {
                    "error": "changing policy needs the dashboard's token: open the URL it "
                    f"printed (a session sends its {CSRF_HEADER} header from the page)"
                },
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
            headers={"Content-Disposition": content_disposition(name)},
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

    api: list[tuple[str, Handler, list[str]]] = [
        ("/api/overview", overview, ["GET"]),
        ("/api/centers/{center_id}", center, ["GET"]),
        ("/api/timeseries", timeseries, ["GET"]),
        ("/api/rounds", rounds, ["GET"]),
        ("/api/policy", policy, ["GET"]),
        ("/api/policy", set_policy, ["POST"]),
        ("/api/money", money, ["GET"]),
        ("/api/statement", statement, ["GET"]),
        ("/api/checkpoint", checkpoint, ["GET"]),
        ("/api/events", events, ["GET"]),
    ]
    routes = [
        Route("/", index),
        Route("/vendor/echarts.min.js", echarts_js),
        *(Route(path, with_session(h), methods=methods) for path, h, methods in api),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [
        Middleware(
            TrustedHostMiddleware,
            allowed_hosts=list(hosts or host_names("127.0.0.1")),
            www_redirect=False,
        )
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.watcher = watcher
    return app


def content_disposition(name: str) -> str:
    """`inline` with `name` as the file name (RFC 6266): a plain-ASCII `filename` with
    every other character as `_`, and the exact name percent-encoded in `filename*`."""
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"inline; filename=\"{plain}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


def _own_origin(request: Request) -> str:
    """The origin of the page that served this request (its Host header was checked)."""
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown"
