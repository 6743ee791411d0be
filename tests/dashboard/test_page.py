"""The dashboard in a real browser against a running broker: the page loads clean, draws
one marker per center, shows the API's figures, updates live, renders offline, and
changes policy only for a browser that presented the token. Every page opens the token
URL first: without a session the page shows nothing but how to get one."""

from __future__ import annotations

import json
import shutil
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from identity import Credentials
from tests.conftest import wait_for
from tests.dashboard.conftest import ARTIFACTS, CENTERS, Dashboard, short_job

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
INTEGER_FIELDS = (
    "devices_total", "devices_busy", "queue_length", "jobs_running", "jobs_done",
    "device_seconds", "energy_wh", "carbon_g", "spend_minor",
)  # fmt: skip


class Watched:
    """A page and every console error, failed request and error response it had."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text}")

    def _failed(self, request: Any) -> None:
        # The events stream is cut when the page goes away: not a failure of the page.
        if not request.url.endswith("/api/events"):
            self.problems.append(f"failed: {request.url} {request.failure}")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"{response.status}: {response.url}")


def rendered(page: Any, at_least: int = 1) -> None:
    page.wait_for_function(f"Number(document.body.dataset.rendered || 0) >= {at_least}")


@pytest.fixture(scope="module")
def page(dash: Dashboard, browser: Any) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    watched = Watched(context.new_page())
    watched.page.goto(f"{dash.url}?token={dash.token}")
    rendered(watched.page)
    try:
        yield watched
    finally:
        context.close()


def test_the_page_loads_with_no_failed_request_or_console_error(page: Watched) -> None:
    page.page.wait_for_function("document.querySelectorAll('#centers tr[data-center]').length")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.page.screenshot(path=str(shot), full_page=True)
    DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, DOCS_SCREENSHOT)
    assert page.problems == []
    assert shot.stat().st_size > 10_000


def test_the_map_draws_one_marker_per_center(dash: Dashboard, page: Watched) -> None:
    markers = page.page.evaluate(
        "icx.charts.map.getOption().series.find(s => s.id === 'centers').data.map(d => d.name)"
    )
    assert sorted(markers) == sorted(c.center_id for c in CENTERS)
    hubs = page.page.evaluate(
        "icx.charts.map.getOption().series.find(s => s.id === 'hubs').data.map(d => d.name)"
    )
    assert sorted(hubs) == ["GS", "JJJ", "NX"]


def test_the_figures_on_the_page_are_the_apis(dash: Dashboard, page: Watched) -> None:
    # The federation is quiet (every job ended), so the page's moment and the API's agree.
    api = dash.get("/api/overview?period=1h")
    cells = page.page.evaluate(
        """() => [...document.querySelectorAll('#centers tr[data-center]')].map(tr => [
             tr.dataset.center,
             Object.fromEntries([...tr.querySelectorAll('td')].map(
               (td, i) => [document.querySelectorAll('#centers th')[i].textContent,
                           td.dataset.value]))])"""
    )
    shown = dict(cells)
    labels = {"devices_total": "devices", "devices_busy": "busy", "queue_length": "queue",
              "jobs_running": "running", "jobs_done": "done", "device_seconds": "device-h",
              "energy_wh": "kWh", "carbon_g": "kg CO2", "spend_minor": "spend ¥"}  # fmt: skip
    for center in api["centers"]:
        row = shown[center["center_id"]]
        for field in INTEGER_FIELDS:
            assert int(row[labels[field]]) == center["figures"][field], (center, field)
    tiles = page.page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#totals .tile')]"
        ".map(t => [t.dataset.field, t.dataset.value]))"
    )
    assert int(tiles["jobs_done"]) == api["totals"]["jobs_done"] == 3
    assert int(tiles["device_seconds"]) == api["totals"]["device_seconds"]
    assert int(tiles["spend_minor"]) == api["totals"]["spend_minor"] > 0


def test_a_live_update_arrives_after_a_job_finishes(dash: Dashboard, page: Watched) -> None:
    before = int(page.page.evaluate("document.querySelector('#totals [data-field=jobs_done]')"
                                    ".dataset.value"))  # fmt: skip
    dash.user.submit(short_job(0.2))
    done = "document.querySelector('#totals [data-field=jobs_done]').dataset.value"
    page.page.wait_for_function(f"Number({done}) > {before}", timeout=20_000)
    assert int(page.page.evaluate("document.getElementById('live').dataset.updates")) >= 2
    assert page.problems == []


def test_offline_every_other_address_blocked_the_page_renders(
    dash: Dashboard, browser: Any
) -> None:
    context = browser.new_context()
    blocked: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(dash.url):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    try:
        watched = Watched(context.new_page())
        watched.page.goto(f"{dash.url}?token={dash.token}")
        rendered(watched.page)
        count = watched.page.evaluate(
            "icx.charts.map.getOption().series.find(s => s.id === 'centers').data.length"
        )
        assert count == len(CENTERS)
        assert watched.page.evaluate("document.querySelectorAll('#rounds tr').length") > 1
        assert watched.page.evaluate("typeof echarts") == "object"
        assert blocked == [] and watched.problems == []
    finally:
        context.close()


def _post_policy(dash: Dashboard, body: dict[str, Any], headers: dict[str, str]) -> int:
    request = urllib.request.Request(
        dash.url + "api/policy",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_policy_without_the_token_is_refused_and_nothing_changes(dash: Dashboard) -> None:
    before = dash.admin.policy()
    doc = {"policy": {"weights": {"cost": 1, "carbon": 50, "latency": 0}}, "comment": "x"}
    assert _post_policy(dash, doc, {}) == 403
    assert _post_policy(dash, doc, {"Authorization": "token not-the-token"}) == 403
    assert _post_policy(dash, doc, {"Cookie": "icx_dashboard_session=made-up"}) == 403
    assert dash.admin.policy() == before
    mode = stat.S_IMODE(dash.token_file.stat().st_mode)
    assert mode == 0o600


def test_a_bad_policy_is_refused_with_the_reason(dash: Dashboard) -> None:
    before = dash.admin.policy()
    auth = {"Authorization": f"token {dash.token}"}
    assert _post_policy(dash, {"policy": {"weights": {"cost": -1}}}, auth) == 400
    assert _post_policy(dash, {"nothing": 1}, auth) == 400
    assert dash.admin.policy() == before


def test_policy_from_the_page_with_the_token_changes_the_brokers_policy(
    dash: Dashboard, browser: Any
) -> None:
    before = dash.admin.policy()
    context = browser.new_context()
    try:
        watched = Watched(context.new_page())
        watched.page.goto(f"{dash.url}?token={dash.token}")
        rendered(watched.page)
        cookie = next(c for c in context.cookies() if c["name"] == "icx_dashboard_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert watched.page.url == dash.url  # the token is gone from the address bar
        policy = {"weights": {"cost": 1, "carbon": 40, "latency": 0},
                  "carbon_price_yuan_per_tonne": 200}  # fmt: skip
        watched.page.fill("#policy-json", json.dumps(policy))
        watched.page.fill("#policy-comment", "greener")
        watched.page.click("#policy-submit")
        watched.page.wait_for_function(
            "document.getElementById('policy-result').textContent.startsWith('version')"
        )
        after = wait_for(
            lambda: (p := dash.admin.policy()).version > before.version and p,
            10,
            "the new policy version",
        )
        assert after.comment == "greener"
        assert after.set_by == Credentials.load(dash.coordinator).member.name == "coordinator"
        assert json.loads(after.policy_json)["weights"]["carbon"] == 40
        shown = watched.page.evaluate(
            "document.querySelector('#policy-now [data-field=version]').textContent"
        )
        assert int(shown) == after.version
        assert watched.problems == []
    finally:
        context.close()
