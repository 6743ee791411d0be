"""Two brokers of one region on one PostgreSQL (issue 14): how long a region is without a
broker when the active one dies, for two lease durations side by side in one run.

Each round: a throw-away database, an active broker and a standby (`--failover-s F`), two
agents given both addresses, jobs running; the active broker is SIGKILLed and the clock
starts. Measured: until the standby serves (its ready file), until both agents are
connected to it (its center list), and until every job (those running at the kill and
ten submitted after it) has succeeded. The floor is the lease itself: the standby may take
over only once the lease lapses, F after the active broker's last renewal (every F/3).

    .venv/bin/python -m bench.failover_bench [--rounds N] [--durations 2,10] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cli._client import reachable_broker
from cli.federation import LocalFederation
from cli.postgres_local import start_cluster
from client import BrokerClient
from core.ports import free_port
from core.states import JobState
from identity import Role
from tests.conftest import FAST_BROKER, jobs_by_id, make_center, record_spec, wait_for
from tests.test_failover import _start_standby

CENTERS = ("CA", "CB")


def one_round(root: Path, url: str, failover_s: float) -> dict[str, float]:
    args = (*FAST_BROKER, "--failover-s", str(failover_s))
    with LocalFederation(root=root, broker_args=args, store=url) as fed:
        standby_port = free_port()
        standby, ready = _start_standby(fed, standby_port)
        both = f"127.0.0.1:{fed.broker_port},127.0.0.1:{standby_port}"
        for center_id in CENTERS:
            fed.start_agent(make_center(center_id), "--broker", both)
        user = fed.credentials(Role.USER)
        out = root / "runs"
        out.mkdir()
        wait_for(lambda: "standing by" in standby.log_path.read_text(), 60, "the standby")
        with BrokerClient(reachable_broker(both), user) as client:
            wait_for(lambda: len(client.centers()) == len(CENTERS), 30, "the centers")
            ids = [client.submit(record_spec(out, 1.0, devices=4)).job_id for _ in range(4)]
            wait_for(
                lambda: all(jobs_by_id(client)[i].state == JobState.RUNNING for i in ids),
                30,
                "jobs running",
            )
        assert fed.broker is not None
        fed.broker.kill(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(ready.exists, 120, "the standby to serve")
        serving = time.monotonic() - killed
        with BrokerClient(reachable_broker(both), user) as client:
            wait_for(
                lambda: sum(c.connected for c in client.centers()) == len(CENTERS), 60, "the agents"
            )
            agents = time.monotonic() - killed
            ids += [client.submit(record_spec(out, 0.2, devices=1)).job_id for _ in range(10)]
            wait_for(
                lambda: all(jobs_by_id(client)[i].state == JobState.SUCCEEDED for i in ids),
                120,
                "every job",
            )
            done = time.monotonic() - killed
        standby.stop()
    return {"serving_s": serving, "agents_s": agents, "all_done_s": done}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--durations", default="2,10", help="lease durations, seconds")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    durations = [float(d) for d in args.durations.split(",")]
    started = time.monotonic()
    cluster = start_cluster(durable=True)
    results: dict[float, list[dict[str, float]]] = {d: [] for d in durations}
    try:
        with tempfile.TemporaryDirectory(prefix="icx-failover-") as tmp:
            for r in range(args.rounds):
                for d in durations:  # alternating, so that a slow minute is shared
                    name = f"failover_{r}_{int(d * 10)}"
                    url = cluster.create_database(name)
                    try:
                        figures = one_round(Path(tmp) / name, url, d)
                    except Exception:
                        for log in sorted((Path(tmp) / name / "logs").glob("*.log")):
                            print(f"--- {log.name}\n{log.read_text()[-3000:]}", file=sys.stderr)
                        raise
                    print(f"  lease {d:g} s, round {r + 1}: {figures}", flush=True)
                    results[d].append(figures)
    finally:
        cluster.stop()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(
        f"\nMeasured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on 2 cores, "
        f"{platform.python_implementation()} {platform.python_version()}, commit {commit}, "
        f"{time.monotonic() - started:.0f} s in all, with "
        f"`python -m bench.failover_bench --rounds {args.rounds} --durations {args.durations}`\n"
    )
    print("| lease (--failover-s) | standby serving, s | agents moved, s | every job done, s |")
    print("|---|---|---|---|")
    for d, runs in results.items():
        cells = [
            f"{statistics.median(r[k] for r in runs):.1f} ({min(r[k] for r in runs):.1f}"
            f"-{max(r[k] for r in runs):.1f})"
            for k in ("serving_s", "agents_s", "all_done_s")
        ]
        print(f"| {d:g} s | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({str(d): r for d, r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
