"""The user's CLI against a real broker and agent: submit, status, jobs, logs, cancel,
centers; JSON for scripts, exit codes for errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.federation import LocalFederation, center_toml
from client import BrokerClient
from core.ports import free_port
from identity import Role
from tests.conftest import FAST_BROKER, make_center, wait_centers, wait_for

AGENT_METRICS_PORT = free_port()
AGENT_HEALTH_PORT = free_port()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(root=tmp_path_factory.mktemp("cli"), broker_args=FAST_BROKER) as fed:
        fed.start_agent(
            make_center("CA", region="TF", pools={"p": ("ascend-910", 4, 500)}),
            "--metrics",
            str(AGENT_METRICS_PORT),
        )
        fed.start_agent(
            make_center("CB", region="YRD", pools={"q": ("nvidia-a800", 2, 900)}),
            "--health",
            f"127.0.0.1:{AGENT_HEALTH_PORT}",
        )
        wait_for(lambda: _centers_up(fed) == 2, 15, "two centers")
        yield fed


def identity(fed: LocalFederation, tenant: str = "lab-a", role: Role = Role.USER) -> Path:
    """The member folder a command runs as: a user of `tenant`, or the coordinator."""
    if role is Role.COORDINATOR:
        return fed.authority.folder / "coordinator"
    return fed.member(f"{tenant}.user", role, tenant=tenant)


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without any icx settings, then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICX_")}
    return {**env, **extra}


def icx(
    fed: LocalFederation, *args: str, tenant: str = "lab-a", role: Role = Role.USER
) -> subprocess.CompletedProcess[str]:
    """`icx ARGS` against the federation's broker as a user of `tenant` (ICX_CONFIG)."""
    env = _env(ICX_BROKER=fed.address, ICX_CONFIG=str(identity(fed, tenant, role)))
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def icx_json(
    fed: LocalFederation, *args: str, tenant: str = "lab-a", role: Role = Role.USER
) -> object:
    result = icx(fed, *args, "--json", tenant=tenant, role=role)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _centers_up(fed: LocalFederation) -> int:
    result = icx(fed, "centers", "--json")
    if result.returncode != 0:
        return 0
    return sum(1 for c in json.loads(result.stdout) if c["connected"])


def test_submit_from_flags_then_follow_logs_and_status(fed: LocalFederation) -> None:
    result = icx(
        fed, "submit", "--devices", "2", "--accelerator", "ascend-910", "--hours", "0.5",
        "--", "sh", "-c", 'echo "devices=$ICX_DEVICES cuda=$CUDA_VISIBLE_DEVICES"; echo oops >&2',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert job_id.startswith("j-")

    logs = icx(fed, "logs", "--follow", job_id)
    assert logs.returncode == 0
    assert logs.stdout == "devices=0,1 cuda=0,1\n"
    assert logs.stderr == "oops\n"

    status = icx_json(fed, "status", job_id)
    assert isinstance(status, dict)
    assert status["state"] == "succeeded"
    assert status["center_id"] == "CA"
    assert status["device_indices"] == [0, 1]
    assert status["exit_code"] == 0
    assert status["tenant"] == "lab-a"
    assert status["estimated_seconds"] == 1800


def test_submit_from_toml_respects_regions_and_reports_failure(
    fed: LocalFederation, tmp_path: Path
) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text(
        'name = "east-only"\naccelerator = "any"\ndevices = 1\nhours = 0.1\n'
        'regions = ["YRD"]\ncommand = ["sh", "-c", "exit 3"]\n'
    )
    job = icx_json(fed, "submit", str(spec))
    assert isinstance(job, dict)
    logs = icx(fed, "logs", "-f", job["job_id"])
    assert logs.returncode == 1  # the job failed
    status = icx_json(fed, "status", job["job_id"])
    assert isinstance(status, dict)
    assert (status["state"], status["center_id"], status["exit_code"]) == ("failed", "CB", 3)


def test_cancel_a_running_job_and_only_by_its_tenant(fed: LocalFederation) -> None:
    job_id = icx(
        fed, "submit", "--devices", "1", "--hours", "1", "--", "sleep", "60"
    ).stdout.strip()
    wait_for(
        lambda: icx_json(fed, "status", job_id)["state"] == "running",  # type: ignore[index]
        15,
        "the job to run",
    )
    other = icx(fed, "cancel", job_id, tenant="lab-b")
    assert other.returncode == 1
    assert other.stderr == f"icx: error: job {job_id} belongs to another tenant\n"

    cancelled = icx_json(fed, "cancel", job_id)
    assert cancelled["state"] == "cancelled"  # type: ignore[index]
    again = icx(fed, "cancel", job_id)
    assert again.returncode == 1
    assert again.stderr == f"icx: error: job {job_id} already cancelled\n"

    # The agent freed the device: its offer shows all of pool p free again.
    def freed() -> bool:
        centers = icx_json(fed, "centers")
        pool = next(c for c in centers if c["center_id"] == "CA")["pools"][0]  # type: ignore[union-attr, index]
        return bool(pool["devices_free"] == 4)

    wait_for(freed, 10, "the device to be free again")


def test_jobs_lists_newest_first_and_filters_by_state(fed: LocalFederation) -> None:
    ids = [
        icx(fed, "submit", "--devices", "1", "--hours", "0.1", "--", "true").stdout.strip()
        for _ in range(3)
    ]
    listed = icx_json(fed, "jobs", "--limit", "3")
    assert [j["job_id"] for j in listed] == ids[::-1]  # type: ignore[union-attr]
    wait_for(
        lambda: all(icx_json(fed, "status", i)["state"] == "succeeded" for i in ids),  # type: ignore[index]
        20,
        "three jobs",
    )
    done = icx_json(fed, "jobs", "--state", "succeeded", "--limit", "0")
    assert set(ids) <= {j["job_id"] for j in done}  # type: ignore[union-attr]
    assert {j["state"] for j in done} == {"succeeded"}  # type: ignore[union-attr]


def test_table_output_and_usage_errors(fed: LocalFederation) -> None:
    centers = icx(fed, "centers")
    assert centers.returncode == 0
    header, *rows = centers.stdout.splitlines()
    assert header.split()[:4] == ["CENTER", "REGION", "LINK", "ACCELERATOR"]
    assert [r.split()[0] for r in rows] == ["CA", "CB"]
    missing = icx(fed, "status", "j-000000000000")
    assert (missing.returncode, missing.stderr) == (4, "icx: error: no job 'j-000000000000'\n")
    neither = icx(fed, "submit")
    assert neither.returncode == 2
    assert "give a spec file or a command after --" in neither.stderr
    tail = icx(fed, "jobs", "--", "ls")
    assert tail.returncode == 2
    assert "jobs takes no command after --" in tail.stderr


def test_metrics_endpoint_counts_jobs_by_state(fed: LocalFederation) -> None:
    assert fed.metrics_port
    lines = _scrape(fed.metrics_port)
    assert float(lines['icx_jobs{state="succeeded"}']) >= 1
    assert float(lines["icx_centers_connected"]) == 2
    assert "icx_match_round_seconds_count" in lines
    assert "icx_claim_refusals_total" in lines


def _scrape(port: int) -> dict[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("icx_") and " " in line
    )


def test_agent_metrics_show_its_own_accounting(fed: LocalFederation) -> None:
    lines = _scrape(AGENT_METRICS_PORT)
    assert lines['icx_agent_devices_total{pool="p"}'] == "4.0"
    assert lines["icx_agent_connected"] == "1.0"
    assert float(lines['icx_agent_claims_total{outcome="accepted"}']) >= 1


def test_health_command(fed: LocalFederation) -> None:
    ok = icx(fed, "health")
    assert (ok.returncode, ok.stdout) == (0, "SERVING\n")
    agent = icx(fed, "health", "--broker", f"127.0.0.1:{AGENT_HEALTH_PORT}")
    assert (agent.returncode, agent.stdout) == (0, "SERVING\n")  # connected to its broker
    down = icx(fed, "health", "--broker", "127.0.0.1:1", "--timeout", "0.5")
    assert down.returncode == 3
    assert down.stderr.startswith("icx: error: broker at 127.0.0.1:1 not serving")


def test_quote_ranks_candidates_before_submitting(fed: LocalFederation) -> None:
    lines = icx_json(fed, "quote", "--devices", "2", "--hours", "2")
    assert isinstance(lines, list)
    # Both centers can take an "any" job; the cheaper pool ranks first.
    assert [(q["center_id"], q["rank"]) for q in lines] == [("CA", 1), ("CB", 2)]
    assert [q["charge_minor"] for q in lines] == [500 * 2 * 2, 900 * 2 * 2]
    assert all(q["has_capacity"] and q["feasible"] for q in lines)
    east = icx_json(fed, "quote", "--devices", "1", "--hours", "1", "--region", "YRD")
    assert [q["center_id"] for q in east] == ["CB"]  # type: ignore[union-attr]
    too_big = icx_json(
        fed, "quote", "--devices", "3", "--accelerator", "nvidia-a800", "--hours", "1"
    )
    assert [(q["center_id"], q["has_capacity"]) for q in too_big] == [("CB", False)]  # type: ignore[union-attr]
    assert too_big[0]["reason"] == "2 devices free now, 3 needed"  # type: ignore[index]
    bad = icx(fed, "quote", "--devices", "0", "--hours", "1")
    assert (bad.returncode, bad.stderr) == (2, "icx: error: devices must be 1..4096, got 0\n")
    # Nothing could run it: said in words (what was asked), exit 1, in JSON too.
    args = ("quote", "--devices", "1", "--hours", "1", "--image", "icx/absent:1")
    nothing = icx(fed, *args)
    assert (nothing.returncode, nothing.stdout) == (
        1,
        "no center could run it: 1 x any accelerator in any region, running the image "
        "icx/absent:1\n",
    )
    as_json = icx(fed, *args, "--json")
    assert (as_json.returncode, json.loads(as_json.stdout)) == (1, [])


def test_explanations_and_a_replayable_round(fed: LocalFederation, tmp_path: Path) -> None:
    job_id = icx(fed, "submit", "--devices", "1", "--hours", "1", "--", "true").stdout.strip()
    wait_for(
        lambda: icx_json(fed, "status", job_id)["state"] == "succeeded",  # type: ignore[index]
        20,
        "the job",
    )
    status = icx_json(fed, "status", job_id)
    explanation = status["explanation"]  # type: ignore[index]
    assert explanation.startswith("CA/p (TF): charge 5.00 yuan")
    assert "runner-up CB/q (YRD)" in explanation

    problem, solution = tmp_path / "round.json", tmp_path / "solution.json"
    dumped = icx(
        fed, "admin", "dump-round", "--out", str(problem), "--solution", str(solution),
        role=Role.COORDINATOR,
    )  # fmt: skip
    assert dumped.returncode == 0, dumped.stderr
    doc = json.loads(problem.read_text())
    assert {p["id"] for p in doc["pools"]} <= {"CA/p", "CB/q"}
    assert json.loads(solution.read_text())["assignments"]  # the round placed something
    replay = icx(fed, "match", "--problem", str(problem), "--solver", "greedy", "--json")
    assert replay.returncode == 0, replay.stderr
    replayed = json.loads(replay.stdout)
    assert {a["job"] for a in replayed["assignments"]} == {j["id"] for j in doc["jobs"]}


def test_a_command_that_cannot_start_fails_with_the_reason(fed: LocalFederation) -> None:
    job_id = icx(fed, "submit", "--devices", "1", "--hours", "1", "--", "no-such-program").stdout
    job_id = job_id.strip()
    status = wait_for(
        lambda: (s := icx_json(fed, "status", job_id))["state"] == "failed" and s,  # type: ignore[index]
        20,
        "the job to fail",
    )
    assert status["reason"] == "cannot start 'no-such-program': not found on PATH"  # type: ignore[index]


# ------------------------------------------------------------------ who a command acts as


def test_whoami_names_the_users_tenant(fed: LocalFederation) -> None:
    who = icx_json(fed, "whoami", tenant="lab-b")
    assert isinstance(who, dict)
    assert (who["role"], who["tenant"], who["name"]) == ("user", "lab-b", "lab-b.user")
    assert who["authenticated"] is True
    assert who["broker"] == fed.address
    coordinator = icx_json(fed, "whoami", role=Role.COORDINATOR)
    assert (coordinator["role"], coordinator["tenant"]) == ("coordinator", "")  # type: ignore[index]
    # The coordinator reads the round; a user may not.
    refused = icx(fed, "admin", "dump-round")
    assert (refused.returncode, refused.stderr) == (
        1,
        "icx: error: a user may not call DumpRound\n",
    )


def test_a_tenant_flag_without_insecure_is_refused(fed: LocalFederation) -> None:
    """The certificate names the tenant: declaring another is an error, not ignored."""
    before = len(icx_json(fed, "jobs", "--all"))  # type: ignore[arg-type]
    submit = ("submit", "--tenant", "lab-b", "--devices", "1", "--hours", "0.1", "--", "true")
    for args in (("jobs", "--tenant", "lab-b"), submit, ("cancel", "--tenant", "lab-b", "j-0")):
        out = icx(fed, *args)
        assert out.returncode == 2, out.stderr
        assert out.stdout == ""
        assert out.stderr == (
            "icx: error: --tenant applies only with --insecure: the broker reads your "
            "tenant from your certificate\n"
        )
    assert len(icx_json(fed, "jobs", "--all")) == before  # type: ignore[arg-type]


def test_no_identity_folder_says_to_run_user_init(fed: LocalFederation, tmp_path: Path) -> None:
    """No --identity, no $ICX_CONFIG and nothing at ~/.config/icx: one line, exit 2."""
    home = tmp_path / "config"
    env = _env(ICX_BROKER=fed.address, XDG_CONFIG_HOME=str(home), HOME=str(tmp_path))
    for args in (("jobs",), ("whoami",), ("health",)):
        out = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
        assert out.returncode == 2, out.stderr
        assert out.stdout == ""
        assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr
        assert out.stderr.startswith(f"icx: error: no identity at {home / 'icx'}: ")
        assert "run `icx user init`" in out.stderr
    missing = tmp_path / "nowhere"
    named = icx(fed, "jobs", "--identity", str(missing))
    assert named.returncode == 2
    assert named.stderr.startswith(f"icx: error: no identity at {missing}: run `icx user init`")
    assert len(named.stderr.splitlines()) == 1


# ------------------------------------------------------------------ what a new user hit


def test_no_arguments_prints_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main"], capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("usage: icx ")
    assert "submit" in result.stdout and "ledger" in result.stdout


@pytest.mark.parametrize("args", [("jobs",), ("centers", "--json"), ("ledger", "checkpoint")])
def test_a_closed_pipe_ends_quietly(fed: LocalFederation, args: tuple[str, ...]) -> None:
    """`icx jobs | head`: the reader has gone before anything is written."""
    env = _env(ICX_BROKER=fed.address, ICX_CONFIG=str(identity(fed)))
    with subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(timeout=60)
    assert (code, err) == (141, b"")


def test_jobs_says_how_many_more_and_takes_all(fed: LocalFederation) -> None:
    for _ in range(3):
        assert icx(fed, "submit", "--devices", "1", "--hours", "0.1", "--", "true").returncode == 0
    total = len(icx_json(fed, "jobs", "--all"))  # type: ignore[arg-type]
    assert total >= 3
    two = icx(fed, "jobs", "--limit", "2")
    assert two.returncode == 0
    assert len(two.stdout.splitlines()) == 1 + 2  # the header, two rows
    assert two.stderr == f"... {total - 2} more of {total} jobs not shown (--limit N or --all)\n"
    every = icx(fed, "jobs", "--all")
    assert (len(every.stdout.splitlines()), every.stderr) == (1 + total, "")
    bad = icx(fed, "jobs", "--limit", "-1")
    assert (bad.returncode, bad.stderr) == (
        2,
        "icx: error: --limit must be >= 0 (0: all), got -1\n",
    )
    both = icx(fed, "jobs", "--limit", "2", "--all")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_json_everywhere_and_icx_broker_honoured(fed: LocalFederation) -> None:
    """ICX_BROKER (set by `icx()`) reaches health, the ledger commands and settle."""
    health = icx_json(fed, "health")
    assert health == {"address": fed.address, "status": "SERVING"}
    checkpoint = icx_json(fed, "ledger", "checkpoint")
    assert isinstance(checkpoint, dict)
    assert checkpoint["origin"] == "icx.local/broker" and checkpoint["size"] >= 3
    assert checkpoint["note"].startswith(f"icx.local/broker\n{checkpoint['size']}\n")
    key = icx_json(fed, "ledger", "key")
    assert isinstance(key, dict) and key["name"] == "icx.local/broker"

    job_id = icx(fed, "submit", "--devices", "1", "--hours", "0.1", "--", "echo", "hi").stdout
    lines = icx(fed, "logs", "--follow", "--json", job_id.strip()).stdout.splitlines()
    items = [json.loads(line) for line in lines]
    assert [i["state"] for i in items if i["type"] == "event"][-1] == "succeeded"
    assert [(i["stream"], i["data"]) for i in items if i["type"] == "log"] == [("stdout", "hi\n")]


def test_settle_names_the_currency_and_csv_keeps_the_transfers(fed: LocalFederation) -> None:
    import datetime as dt

    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    # A run of a whole second or more costs at least 1 fen: the tenant owes the center.
    job = icx(fed, "submit", "--devices", "1", "--hours", "0.1", "--", "sleep", "1.2")
    job_id = job.stdout.strip()
    wait_for(lambda: icx_json(fed, "status", job_id)["state"] == "succeeded", 20, "the job")  # type: ignore[index]
    # The center reports the run's usage just after it ends: a tenant then owes it.
    body = wait_for(
        lambda: (b := icx_json(fed, "settle", "--period", period))["transfers"] and b,  # type: ignore[index]
        15,
        "a transfer",
    )
    assert body["currency"] == "CNY"

    table = icx(fed, "settle", "--period", period)
    assert table.returncode == 0, table.stderr
    out = table.stdout.splitlines()
    assert out[1] == "amounts in CNY, major units"
    assert out[2].split()[:4] == ["PARTY", "PAID", "CNY", "RECEIVED"]
    assert any(line.split()[:4] == ["PAYER", "PAYEE", "AMOUNT", "CNY"] for line in out)

    rows = icx(fed, "settle", "--period", period, "--csv").stdout.splitlines()
    assert rows[0] == (
        "kind,party,counterparty,currency,paid_minor,received_minor,net_minor,amount_minor,"
        "energy_wh,carbon_g"
    )
    kinds = [r.split(",")[0] for r in rows[1:]]
    assert kinds.count("transfer") == len(body["transfers"]) >= 1
    assert kinds.count("position") == len(body["parties"])
    first = body["transfers"][0]
    assert f"transfer,{first['payer']},{first['payee']},CNY,,,,{first['amount_minor']},," in rows


def test_the_readme_ledger_tour_runs(fed: LocalFederation, tmp_path: Path) -> None:
    bundle, trust = tmp_path / "bundle.json", tmp_path / "trust.json"
    missing = icx(fed, "ledger", "verify", str(bundle), "--policy", str(trust))
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == (
        f"icx: error: no proof bundle at {bundle} (write one with: icx ledger prove)\n"
    )
    assert icx(fed, "ledger", "prove", "--index", "1", "-o", str(bundle)).returncode == 0
    no_policy = icx(fed, "ledger", "verify", str(bundle), "--policy", str(trust))
    assert (no_policy.returncode, no_policy.stderr) == (
        2,
        f"icx: error: no trust policy at {trust} "
        "(write one with: icx ledger trust --broker HOST:PORT -o FILE)\n",
    )
    made = icx(fed, "ledger", "trust", "-o", str(trust))
    assert made.returncode == 0, made.stderr
    assert made.stderr.startswith(f"wrote {trust}: log key ")
    verified = icx(fed, "ledger", "verify", str(bundle), "--policy", str(trust))
    assert (verified.returncode, verified.stderr) == (0, "")
    assert verified.stdout.startswith("ok: entry 1 is in icx.local/broker at size ")


def test_a_past_deadline_reads_as_a_utc_time(fed: LocalFederation) -> None:
    result = icx(fed, "submit", "--devices", "1", "--hours", "1", "--deadline",
                 "2001-01-01T00:00:00Z", "--", "true")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(
        "icx: error: deadline_ms must be in the future, got 978307200000 "
        "(2001-01-01T00:00:00Z; now 20"
    )
    assert result.stderr.endswith("Z)\n")


def test_commands_that_do_not_solve_do_not_load_the_solver(fed: LocalFederation) -> None:
    """The start-up of `icx jobs` and `icx --version` stays light (figures in
    docs/benchmarks.md): neither loads OR-Tools, the ledger, the broker or the agent."""
    heavy = ("ortools", "matcher", "ledger", "broker", "node_agent", "numpy")
    script = (
        "import sys; from cli.main import main; code = main(sys.argv[1:]); "
        f"print(code, [m for m in {heavy!r} if m in sys.modules], file=sys.stderr)"
    )
    for args in (("jobs", "--broker", fed.address), ("status", "j-000000000000")):
        result = subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=30,
            env=_env(ICX_BROKER=fed.address, ICX_CONFIG=str(identity(fed))),
        )  # fmt: skip
        assert result.stderr.splitlines()[-1] in ("0 []", "4 []"), result.stderr
    # --version and --help build the whole parser: not even gRPC is loaded for them.
    parser_only = (
        "import sys; from cli.main import build_parser; build_parser(); "
        f"print([m for m in {(*heavy, 'grpc')!r} if m in sys.modules])"
    )
    built = subprocess.run(
        [sys.executable, "-c", parser_only], capture_output=True, text=True, timeout=30
    )
    assert (built.stdout, built.stderr) == ("[]\n", "")


def test_match_offers_the_matchers_solvers() -> None:
    from cli.match_cmd import SOLVERS
    from matcher import SOLVERS as MATCHER_SOLVERS

    assert SOLVERS == MATCHER_SOLVERS


def test_agent_run_finds_its_broker_in_icx_broker(
    federation: LocalFederation, client: BrokerClient
) -> None:
    # `agent run` presents the member folder beside its config (CE.identity).
    identity_folder, _ = federation.center_identity("CE")
    config = identity_folder.parent / "CE.toml"
    config.write_text(center_toml(make_center("CE"), key_file="CE.key"))
    env = _env(ICX_BROKER=federation.address)
    with subprocess.Popen(
        [sys.executable, "-m", "cli.main", "agent", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    ) as agent:
        try:
            wait_centers(client, 1)
            assert [c.center.center_id for c in client.centers()] == ["CE"]
        finally:
            agent.terminate()
            agent.wait(timeout=30)


def test_flags_beside_a_spec_file_are_refused_not_ignored(tmp_path: Path) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text('accelerator = "any"\ndevices = 1\nhours = 1\ncommand = ["true"]\n')
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "submit", str(spec), "--devices", "4", "--name", "x",
         "--broker", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (out.returncode, out.stderr.strip()) == (
        2,
        "icx: error: --devices, --name cannot be combined with a spec file: put them in the "
        "file, or give flags and a command after --",
    )


def test_a_region_s_brokers_are_comma_separated_and_the_listening_one_is_chosen() -> None:
    from cli._client import broker_address, reachable_broker

    assert broker_address("10.0.0.5:7801, localhost") == "10.0.0.5:7801,localhost:7700"
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        up, down = (f"127.0.0.1:{s.getsockname()[1]}" for s in (listening, closed))
        assert reachable_broker(f"{down},{up}") == up
        assert reachable_broker(f"{up},{down}") == up
        assert reachable_broker(down) == down  # one address: no probe
    for bad in (",", "a:1,b:notaport"):
        out = subprocess.run(
            [sys.executable, "-m", "cli.main", "jobs", "--insecure", "--broker", bad],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 2
        assert out.stderr.startswith("icx: error: --broker ")


def test_a_broker_address_without_a_port_gets_the_default_and_a_bad_port_is_refused() -> None:
    from cli._client import broker_address

    assert broker_address("localhost") == "localhost:7700"
    assert broker_address("10.0.0.5:7801") == "10.0.0.5:7801"
    assert broker_address("[::1]") == "[::1]:7700"
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "jobs", "--insecure", "--broker", "127.0.0.1:notaport"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (out.returncode, out.stderr.strip()) == (
        2,
        "icx: error: --broker must be HOST:PORT, got '127.0.0.1:notaport'",
    )
