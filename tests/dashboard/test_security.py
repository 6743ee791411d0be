"""Who can reach the dashboard and change policy through it: a form posted from another
local port (same site, so SameSite cookies do not help) is refused; a foreign Origin, a
missing CSRF header or a body that is not JSON is refused; a Host header the dashboard
was not told about gets 400 (DNS rebinding); every /api/* path without a session gets 403
and nothing else; the page without a session says how to get one. Also: the figures pick
the broker again when it is unavailable, and SIGTERM or a failed --ready-file leaves no
token file behind."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import http.client
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cli._client import reachable_broker
from client import AsyncBrokerClient
from core.errors import Unavailable
from dashboard.app import NO_SESSION, content_disposition
from dashboard.auth import COOKIE, CSRF_HEADER
from dashboard.figures import BrokerFigures
from identity import Credentials
from tests.conftest import run_icx, wait_for
from tests.dashboard.conftest import ALLOWED_HOST, CENTERS, Dashboard

API_PATHS = (
    "/api/overview", "/api/centers/CN07", "/api/timeseries", "/api/rounds", "/api/policy",
    "/api/money", "/api/statement?party=lab-a", "/api/checkpoint", "/api/events",
)  # fmt: skip
NEW_POLICY = {"policy": {"weights": {"cost": 1, "carbon": 7, "latency": 0}}, "comment": "x"}


def call(
    dash: Dashboard,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request to the dashboard, headers (Host included) as given."""
    where = urlsplit(dash.url)
    conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def session(dash: Dashboard) -> tuple[str, str]:
    """A session opened with the token (its Cookie header) and its CSRF value."""
    status, headers, _ = call(dash, "GET", f"/?token={dash.token}")
    assert status == 303
    cookie = headers["set-cookie"].partition(";")[0]
    assert cookie.startswith(f"{COOKIE}=")
    status, _, page = call(dash, "GET", "/", headers={"Cookie": cookie})
    found = re.search(r'data-csrf="([^"]+)"', page.decode())
    assert status == 200 and found is not None
    return cookie, found.group(1)


def post_policy(dash: Dashboard, headers: dict[str, str]) -> tuple[int, Any]:
    status, _, body = call(
        dash, "POST", "/api/policy", body=json.dumps(NEW_POLICY).encode(), headers=headers
    )
    return status, json.loads(body)


@pytest.fixture
def other_port(tmp_path: Path, dash: Dashboard) -> Iterator[str]:
    """A page on another port of the same host whose form posts a policy, as text/plain
    (a "simple" request: no preflight), to the dashboard as soon as it loads."""
    name = json.dumps(NEW_POLICY)[:-1] + ', "pad": "'  # the form adds `=VALUE` after it
    (tmp_path / "index.html").write_text(
        "<!doctype html><body onload='document.forms[0].submit()'>"
        f"<form method=POST enctype=text/plain action='{dash.url}api/policy'>"
        f"<input name='{name}' value='\"}}'></form></body>"
    )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_form_posted_from_another_local_port_cannot_change_policy(
    dash: Dashboard, browser: Any, other_port: str
) -> None:
    before = dash.admin.policy()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{dash.url}?token={dash.token}")  # the victim's browser has a session
        assert any(c["name"] == COOKIE for c in context.cookies())
        with page.expect_response(lambda r: r.url == f"{dash.url}api/policy") as posted:
            page.goto(other_port)
        assert posted.value.status == 403
        assert posted.value.json()["error"].startswith("policy changes are taken only from")
    finally:
        context.close()
    assert dash.admin.policy() == before


def test_policy_needs_json_the_dashboards_origin_and_the_sessions_csrf_header(
    dash: Dashboard, session: tuple[str, str]
) -> None:
    cookie, csrf = session
    before = dash.admin.policy()
    own = dash.url.rstrip("/")
    good = {"Cookie": cookie, CSRF_HEADER: csrf, "Content-Type": "application/json"}
    status, body = post_policy(dash, {**good, "Origin": "http://127.0.0.1:9"})
    assert (status, body) == (
        403,
        {"error": "policy changes are taken only from this page, not from http://127.0.0.1:9"},
    )
    status, body = post_policy(dash, {**good, "Origin": "null"})
    assert status == 403
    # The token header is no way around the Origin check either.
    status, _ = post_policy(
        dash, {"Authorization": f"token {dash.token}", "Origin": "http://evil.example"}
    )
    assert status == 403
    status, body = post_policy(dash, {**good, "Origin": own, "Content-Type": "text/plain"})
    assert (status, body) == (
        415,
        {"error": "the request must be Content-Type: application/json, got 'text/plain'"},
    )
    no_csrf = {"Cookie": cookie, "Content-Type": "application/json", "Origin": own}
    assert post_policy(dash, no_csrf)[0] == 403
    assert post_policy(dash, {**no_csrf, CSRF_HEADER: "made-up"})[0] == 403
    assert dash.admin.policy() == before


def test_a_host_header_it_was_not_told_about_gets_400(dash: Dashboard) -> None:
    port = urlsplit(dash.url).port
    auth = {"Authorization": f"token {dash.token}"}
    for path in ("/", "/api/overview"):
        status, _, body = call(dash, "GET", path, headers={**auth, "Host": f"evil.example:{port}"})
        assert (status, body) == (400, b"Invalid host header")
    for host in (ALLOWED_HOST, "localhost", "127.0.0.1"):
        status, _, body = call(
            dash, "GET", "/api/rounds", headers={**auth, "Host": f"{host}:{port}"}
        )
        assert status == 200 and "rounds" in json.loads(body)


def test_every_api_path_without_a_session_is_403_with_nothing_else(
    dash: Dashboard, session: tuple[str, str]
) -> None:
    made_up = {"Cookie": f"{COOKIE}=made-up"}
    wrong_token = {"Authorization": "token not-the-token"}
    for path in API_PATHS:
        for headers, said in (
            ({}, NO_SESSION),
            (made_up, NO_SESSION),
            (wrong_token, "that token is not this run's"),
        ):
            status, _, body = call(dash, "GET", path, headers=headers)
            assert (status, json.loads(body)) == (403, {"error": said}), path
    # With the session (or the token) the same paths answer.
    cookie, _ = session
    for path in API_PATHS[:-1]:  # the events stream does not end: its opening is enough
        assert call(dash, "GET", path, headers={"Cookie": cookie})[0] == 200, path


def test_the_page_without_a_session_says_how_to_get_one(dash: Dashboard, browser: Any) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        asked: list[str] = []
        page.on("request", lambda r: asked.append(urlsplit(r.url).path))
        page.goto(dash.url)
        page.wait_for_selector("#error:not([hidden])")
        assert page.text_content("#error") == (
            "No session: open the URL with the token that `icx dashboard` printed "
            "(the token is also in its token file)."
        )
        assert page.is_hidden("main")
        assert [p for p in asked if p.startswith("/api/")] == []
    finally:
        context.close()


def test_the_figures_pick_the_broker_again_when_it_is_unavailable(dash: Dashboard) -> None:
    creds = Credentials.load(dash.coordinator)
    down, up = dash.brokers.split(",")

    async def connect() -> AsyncBrokerClient:
        return AsyncBrokerClient(reachable_broker(dash.brokers), creds)

    async def read(reconnect: bool) -> tuple[dict[str, Any], str]:
        # Started against the broker that went away, as after a failover.
        figures = BrokerFigures(
            AsyncBrokerClient(down, creds), reconnect=connect if reconnect else None
        )
        try:
            return await figures.overview(3_600_000), figures.client.address
        finally:
            await figures.close()

    # Its own loop on its own thread: the browser's client holds this thread's.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        overview, address = pool.submit(asyncio.run, read(reconnect=True)).result()
        assert address == up
        assert sorted(c["center_id"] for c in overview["centers"]) == sorted(
            c.center_id for c in CENTERS
        )
        with pytest.raises(Unavailable):
            pool.submit(asyncio.run, read(reconnect=False)).result()


def _dashboard_args(dash: Dashboard, tmp_path: Path, ready: Path) -> list[str]:
    return [
        "dashboard", "--broker", dash.fed.address, "--listen", "127.0.0.1:0",
        "--token-file", str(tmp_path / "dash.token"), "--ready-file", str(ready),
    ]  # fmt: skip


def test_sigterm_stops_the_dashboard_with_0_and_removes_its_token_file(
    dash: Dashboard, tmp_path: Path
) -> None:
    ready = tmp_path / "ready.json"
    token_file = tmp_path / "dash.token"
    log = tmp_path / "dashboard.log"
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *_dashboard_args(dash, tmp_path, ready)],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("ICX_")},
                "ICX_CONFIG": str(dash.coordinator),
            },
            stdout=out,
            stderr=out,
        )
    try:
        wait_for(lambda: ready.exists() or child.poll() is not None, 20, "the dashboard ready")
        assert child.poll() is None and token_file.exists()
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=20) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not token_file.exists()
    assert "Traceback" not in log.read_text()


def test_a_ready_file_that_cannot_be_written_fails_in_one_line_leaving_no_token(
    dash: Dashboard, tmp_path: Path
) -> None:
    ready = tmp_path / "no-such-folder" / "ready.json"
    done = run_icx(*_dashboard_args(dash, tmp_path, ready), identity=dash.coordinator)
    assert (done.returncode, done.stderr) == (
        1,
        f"icx: error: cannot write --ready-file {ready}: No such file or directory\n",
    )
    assert not (tmp_path / "dash.token").exists()


def test_an_allow_host_that_is_not_a_name_is_refused(dash: Dashboard) -> None:
    done = run_icx("dashboard", "--broker", dash.fed.address, "--listen", "127.0.0.1:0",
                   "--allow-host", "*", identity=dash.coordinator)  # fmt: skip
    assert (done.returncode, done.stderr) == (
        2,
        "icx: error: --allow-host must be a host name or address, got '*'\n",
    )


def _get_raw(dash: Dashboard, path: str) -> Any:
    """The reply to GET `path` with the token: status, headers and body, whatever the code."""
    connection = http.client.HTTPConnection(urlsplit(dash.url).netloc, timeout=10)
    try:
        connection.request("GET", path, headers={"Authorization": f"token {dash.token}"})
        reply = connection.getresponse()
        return reply.status, reply.headers, reply.read()
    finally:
        connection.close()


def test_a_statement_names_its_file_in_both_forms_of_rfc_6266(dash: Dashboard) -> None:
    status, headers, body = _get_raw(dash, "/api/statement?party=lab-a")
    assert status == 200, body
    match = re.fullmatch(
        r"inline; filename=\"statement-(\d{4}-\d{2})-lab-a\.json\"; "
        r"filename\*=UTF-8''statement-(\d{4}-\d{2})-lab-a\.json",
        headers["Content-Disposition"],
    )
    assert match is not None and match[1] == match[2], headers["Content-Disposition"]


def test_a_file_name_never_carries_quotes_line_breaks_or_other_bytes_raw() -> None:
    # The broker takes only plain party ids; the header is safe whatever reaches it.
    hostile = 'statement-2026-12-a"; b\r\nX-Evil: 1/é.json'
    assert content_disposition(hostile) == (
        'inline; filename="statement-2026-12-a___b__X-Evil__1__.json"; '
        "filename*=UTF-8''statement-2026-12-a%22%3B%20b%0D%0AX-Evil%3A%201%2F%C3%A9.json"
    )


def test_a_party_that_is_no_party_id_is_refused_with_no_file_name(dash: Dashboard) -> None:
    status, headers, body = _get_raw(dash, "/api/statement?party=a%22%0D%0AX-Evil:%201")
    assert status == 400
    assert "party must be" in json.loads(body)["error"]
    assert "Content-Disposition" not in headers and "X-Evil" not in headers


def test_a_dashboard_started_as_anyone_but_the_coordinator_is_refused_at_once(
    dash: Dashboard, tmp_path: Path
) -> None:
    from identity import Role
    from tests.conftest import run_icx

    user = dash.fed.member("lab-a.user", Role.USER, tenant="lab-a")
    token_file = tmp_path / "token"
    done = run_icx(
        "dashboard", "--broker", dash.fed.address, "--identity", str(user),
        "--listen", "127.0.0.1:0", "--token-file", str(token_file),
    )  # fmt: skip
    assert (done.returncode, done.stderr.strip()) == (
        1,
        "icx: error: the dashboard reads and changes what only the coordinator may: "
        f"{user} holds the certificate of user lab-a.user of tenant lab-a; give --identity "
        "the coordinator's folder",
    )
    assert not token_file.exists()
