"""The federation on the command line: `icx federation peers` at a peering broker, at one
that does not peer and at none; where a forwarded job ran in `icx status` and `icx jobs`,
at its home broker and at the peer that runs it. Two region brokers, each its own OS
process, the CLI run as a child process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.federation import LocalFederation
from cli.federation_cmd import counters_line
from client import AsyncBrokerClient
from core.errors import InvalidArgument
from core.states import JobState
from core.views import Federation, PeerView
from identity import Role
from ledger import SignerKey
from tests.conftest import make_center, run_icx, wait_centers, wait_for
from tests.federation.regions import regions

GATED_JOB = Path(__file__).parent.parent / "jobs" / "gated.py"


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalFederation]]:
    """East with no center, west with one (4 devices): whatever east runs, runs west."""
    root = tmp_path_factory.mktemp("regions")
    with regions(root, ("east", "west")) as feds:
        west = make_center("west-1", region="west", pools={"main": ("ascend-910", 4, 100)})
        feds["west"].start_agent(west)
        with feds["west"].client() as c:
            wait_centers(c, 1)
        yield feds


def _user(fed: LocalFederation) -> Path:
    return fed.member("lab-a.user", Role.USER, tenant="lab-a")


def _coordinator(fed: LocalFederation) -> Path:
    return fed.authority.folder / "coordinator"


def _icx(
    fed: LocalFederation, *args: str, identity: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`icx ARGS --broker FED` (before a job's command after --) as `identity`, by
    default a user of lab-a."""
    cut = args.index("--") if "--" in args else len(args)
    argv = (*args[:cut], "--broker", fed.address, *args[cut:])
    return run_icx(*argv, identity=identity or _user(fed))


def _icx_json(fed: LocalFederation, *args: str, identity: Path | None = None) -> Any:
    done = _icx(fed, *args, "--json", identity=identity)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return json.loads(done.stdout)


def _west_seen(view: dict[str, Any]) -> dict[str, Any] | None:
    """broker-west's row once its summary, with its one center, is believed."""
    rows = [p for p in view["peers"] if p["broker"] == "broker-west"]
    return rows[0] if rows and rows[0]["live"] and rows[0]["centers"] == 1 else None


# ------------------------------------------------------------------ peers


def test_peers_json_lists_the_peer_live_with_its_centers(two: dict[str, LocalFederation]) -> None:
    east, west = two["east"], two["west"]
    view = wait_for(
        lambda: (v := _icx_json(east, "federation", "peers")) and _west_seen(v) and v,
        15,
        "broker-west's summary at east",
    )
    assert (view["broker"], view["region"], view["peering"]) == ("broker-east", "east", True)
    assert view["peer_address"] == east.peer_address
    assert [p["broker"] for p in view["peers"]] == ["broker-west"]
    row = view["peers"][0]
    assert (row["region"], row["address"], row["centers"], row["devices_free"]) == (
        "west",
        west.address,
        1,
        4,
    )
    assert row["version"] > 0 and row["age_ms"] >= 0
    assert view["received"] >= 1 and view["published"] >= 1
    assert view["pull_failures"] >= 0 and isinstance(view["dropped"], dict)
    assert (view["forwarded_out"], view["forwarded_in"]) == (0, 0)

    # The async client reads the same.
    async def read() -> Federation:
        async with AsyncBrokerClient(east.address, east.credentials(tenant="lab-a")) as c:
            return await c.peers()

    seen = asyncio.run(read())
    assert (seen.broker, seen.region, seen.peer_address) == (
        "broker-east",
        "east",
        east.peer_address,
    )
    assert [(p.broker, p.centers, p.devices_free, p.live) for p in seen.peers] == [
        ("broker-west", 1, 4, True)
    ]


def test_peers_text_names_the_peer_and_the_counters(two: dict[str, LocalFederation]) -> None:
    east = two["east"]
    with east.client("lab-a") as c:
        wait_for(lambda: any(p.live for p in c.peers().peers), 15, "a live peer at east")
    done = _icx(east, "federation", "peers")
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[0] == f"broker-east (region east) at {east.peer_address}"
    assert lines[1].split() == [
        "BROKER", "REGION", "ADDRESS", "VERSION", "AGE", "S", "CENTERS", "FREE", "LIVE"
    ]  # fmt: skip
    row = lines[2].split()
    assert (row[0], row[1], row[2], row[5:]) == (
        "broker-west",
        "west",
        two["west"].address,
        ["1", "4", "yes"],
    )
    assert len(lines) == 4
    assert lines[3].startswith("gossip: published ")
    assert lines[3].endswith("; active forwarded jobs: out 0, in 0")


def _witness_key(fed: LocalFederation) -> str:
    """The broker's witness verifier key, from its key file."""
    return SignerKey.parse(fed.db.with_suffix(".witness-key").read_text()).verifier.text()


def test_peers_show_each_brokers_witness_key(two: dict[str, LocalFederation]) -> None:
    east, west = two["east"], two["west"]
    # West's key reaches east with west's first checkpoint announcement.
    view = wait_for(
        lambda: (
            (v := _icx_json(east, "federation", "peers"))
            and v["peers"]
            and v["peers"][0]["witness_key"]
            and v
        ),
        15,
        "broker-west's witness key at east",
    )
    assert view["witness_key"] == _witness_key(east)
    assert [(p["broker"], p["witness_key"]) for p in view["peers"]] == [
        ("broker-west", _witness_key(west))
    ]
    assert view["witness_key"] != _witness_key(west)
    # Kept with what east witnesses, so a restart still shows it.
    kept = json.loads(east.db.with_suffix(".witness.json").read_text())
    assert kept["witness_keys"] == {"broker-west": _witness_key(west)}
    # Each broker tells its own; the keys name their brokers.
    assert _icx_json(west, "federation", "peers")["witness_key"] == _witness_key(west)
    assert _witness_key(west).startswith("broker-west+")

    # One key a line, for `icx ledger trust --witness`; the table leaves them out.
    listed = _icx(east, "federation", "peers", "--witness-keys")
    assert (listed.returncode, listed.stderr) == (0, "")
    assert listed.stdout == f"{_witness_key(west)}\n"
    trust = _icx(east, "ledger", "trust", "--witness", listed.stdout.strip(), "--quorum", "1")
    assert trust.returncode == 0, trust.stderr
    policy = json.loads(trust.stdout)
    assert _witness_key(west) in json.dumps(policy)
    assert _witness_key(west) not in _icx(east, "federation", "peers").stdout
    # The two forms of output do not mix.
    both = _icx(east, "federation", "peers", "--json", "--witness-keys")
    assert (both.returncode, both.stdout) == (2, "")
    assert both.stderr.splitlines()[-1].endswith(
        "argument --witness-keys: not allowed with argument --json"
    )


def test_a_broker_that_does_not_peer_says_so(tmp_path: Path) -> None:
    with LocalFederation(root=tmp_path / "solo") as solo:
        done = _icx(solo, "federation", "peers")
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout == (
            f"the broker at {solo.address} does not peer with other brokers "
            "(it was started without --peer-listen)\n"
        )
        view = _icx_json(solo, "federation", "peers")
        assert (view["broker"], view["peering"], view["peers"], view["peer_address"]) == (
            "",
            False,
            [],
            "",
        )
        assert view["witness_key"] == ""
        keys = _icx(solo, "federation", "peers", "--witness-keys")
        assert (keys.returncode, keys.stdout, keys.stderr) == (0, "", "")


def test_peers_errors_are_one_line_with_their_exit_code(two: dict[str, LocalFederation]) -> None:
    east, west = two["east"], two["west"]
    user = _user(east)
    down = run_icx("federation", "peers", "--broker", "127.0.0.1:1", identity=user)
    assert (down.returncode, down.stdout) == (3, "")
    assert down.stderr.startswith("icx: error: broker unreachable at 127.0.0.1:1")
    assert down.stderr.count("\n") == 1
    bad = run_icx("federation", "peers", "--broker", "127.0.0.1:http", identity=user)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == "icx: error: --broker must be HOST:PORT, got '127.0.0.1:http'\n"
    # A center is no reader of the peering: the broker refuses it, by name.
    center = west.center_identity("west-1", "west")[0]
    refused = _icx(east, "federation", "peers", identity=center)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == "icx: error: a center may not call ListPeers\n"
    bare = run_icx("federation", identity=user)
    assert (bare.returncode, bare.stderr.splitlines()[-1]) == (
        2,
        "icx federation: error: the following arguments are required: COMMAND",
    )


def test_federation_peers_help_says_what_it_shows() -> None:
    done = run_icx("federation", "peers", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for words in ("--broker HOST:PORT", "--json", "dropped by reason", "does not peer"):
        assert words in text


def test_the_counters_line_names_each_drop_reason() -> None:
    view = Federation(
        broker="broker-east",
        published=5,
        received=4,
        pulls=2,
        pull_failures=1,
        dropped=(("bad_signature", 0), ("non_member", 2), ("stale", 3)),
        forwarded_out=1,
    )
    assert counters_line(view) == (
        "gossip: published 5, received 4, pulls 2, pull failures 1, dropped 5 "
        "(non_member 2, stale 3); active forwarded jobs: out 1, in 0"
    )
    assert not Federation(broker="").peering


def test_a_view_with_a_negative_count_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"^pull_failures must be >= 0, got -1$"):
        Federation(broker="b", pull_failures=-1)
    with pytest.raises(InvalidArgument, match=r"^dropped\[stale\] must be >= 0, got -2$"):
        Federation(broker="b", dropped=(("stale", -2),))
    with pytest.raises(InvalidArgument, match=r"^peer broker-west: age_ms must be >= 0, got -5$"):
        PeerView(
            broker="broker-west",
            region="west",
            address="127.0.0.1:1",
            version=1,
            age_ms=-5,
            centers=0,
            devices_free=0,
            live=False,
        )


# ------------------------------------------------------------- a job's place


def test_a_forwarded_job_says_where_it_ran(two: dict[str, LocalFederation], tmp_path: Path) -> None:
    east, west = two["east"], two["west"]
    with east.client("lab-a") as c:
        wait_for(lambda: any(p.live and p.centers for p in c.peers().peers), 15, "west at east")
    submitted = _icx(
        east,
        "submit", "--devices", "1", "--accelerator", "ascend-910", "--hours", "1",
        "--", sys.executable, str(GATED_JOB), str(tmp_path),
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    wait_for(lambda: list(tmp_path.glob(f"{job_id}.*.started")), 30, "the job to start at west")

    # While it runs, each broker counts it: out at east, in at west.
    wait_for(
        lambda: _icx_json(east, "federation", "peers")["forwarded_out"] == 1, 10, "out at east"
    )
    assert _icx_json(west, "federation", "peers")["forwarded_in"] == 1

    (tmp_path / "go").touch()
    with east.client("lab-a") as c:
        wait_for(lambda: c.get_job(job_id).state == JobState.SUCCEEDED, 30, "the job to end")

    # At home: where it ran, in words and in JSON.
    status = _icx(east, "status", job_id)
    assert status.returncode == 0, status.stderr
    assert "center       west-1/main via broker-west\n" in status.stdout
    shown = _icx_json(east, "status", job_id)
    assert (shown["broker"], shown["home"], shown["center_id"]) == ("broker-west", "", "west-1")
    listed = _icx(east, "jobs")
    row = next(line for line in listed.stdout.splitlines() if line.startswith(job_id))
    assert "west-1 via broker-west" in row
    rows = {j["job_id"]: j for j in _icx_json(east, "jobs")}
    assert (rows[job_id]["broker"], rows[job_id]["home"]) == ("broker-west", "")

    # At the peer that ran it, the coordinator sees who forwarded it.
    there = _icx(west, "status", job_id, identity=_coordinator(west))
    assert there.returncode == 0, there.stderr
    assert "center       west-1/main, forwarded by broker-east\n" in there.stdout
    shown = _icx_json(west, "status", job_id, identity=_coordinator(west))
    assert (shown["broker"], shown["home"]) == ("", "broker-east")
