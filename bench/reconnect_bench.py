"""What an agent sends when its stream to the broker comes back: the output its jobs wrote
while the stream was down (up to 4 MiB held), side by side in one run:

- *joined* (the agent, node_agent/_link.py): a job's successive pieces of one stream
  joined into messages of up to 64 KiB, each joined once;
- *one per piece*: every piece its own message (the broker takes a center's chunks at
  500 a second, bursts of 1,000: the rest would be dropped there);
- *grown*: the same joining done by growing each message's bytes field piece by piece
  (protobuf copies the whole field each time).

Each way runs in a process of its own (its peak memory is its own), on the same held
output: 100-byte lines, the whole 4 MiB. Run:

    .venv/bin/python -m bench.reconnect_bench [--line-bytes 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time

from core.clock import SYSTEM
from core.types import JobId, LogChunk
from icx.v1 import agent_pb2
from node_agent._link import HELD_OUTPUT_BYTES, Link
from node_agent._output import CHUNK_BYTES
from node_agent.metrics import AgentMetrics
from tests.conftest import make_center

WAYS = ("joined", "one per piece", "grown")


def _held_link(line_bytes: int) -> Link:
    link = Link(
        make_center("CB"), "127.0.0.1:1", usage_key=None, clock=SYSTEM, metrics=AgentMetrics()
    )
    line = b"x" * (line_bytes - 1) + b"\n"
    for seq in range(1, HELD_OUTPUT_BYTES // line_bytes + 1):
        link.send_output(LogChunk(job_id=JobId("j-1"), seq=seq, stream="stdout", data=line))
    return link


def _one(way: str, line_bytes: int) -> dict[str, float]:
    link = _held_link(line_bytes)
    pieces = len(link._held)
    out: asyncio.Queue[agent_pb2.ConnectRequest] = asyncio.Queue()
    welcome = agent_pb2.Welcome(heartbeat_interval_ms=1000, center_expiry_ms=10_000)
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if way == "joined":
        link._welcome(welcome, out)
    elif way == "one per piece":
        for m in link._held:
            out.put_nowait(m)
    else:
        last: agent_pb2.LogChunk | None = None
        for m in link._held:
            if last is not None and len(last.data) + len(m.log.data) <= CHUNK_BYTES:
                last.data += m.log.data
                last.seq = m.log.seq
                continue
            last = m.log
            out.put_nowait(m)
    took = time.perf_counter() - t
    after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "pieces": pieces,
        "messages": out.qsize(),
        "s": took,
        "peak_growth_mib": (after_kib - before_kib) / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--line-bytes", type=int, default=100)
    parser.add_argument("--one", choices=WAYS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args.line_bytes)))
        return 0
    rows = {}
    for way in WAYS:
        done = subprocess.run(
            [sys.executable, "-m", "bench.reconnect_bench", "--one", way,
             "--line-bytes", str(args.line_bytes)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows[way] = json.loads(done.stdout)
    base = rows["joined"]
    print(
        f"{base['pieces']:,} held pieces of {args.line_bytes} bytes "
        f"({HELD_OUTPUT_BYTES // 1024} KiB), sent at reconnect:\n"
    )
    print("| way | messages | time, s | peak memory growth, MiB | time / joined |")
    print("|---|---|---|---|---|")
    for way, r in rows.items():
        ratio = r["s"] / base["s"] if base["s"] else float("nan")
        print(
            f"| {way} | {r['messages']:,} | {r['s']:.3f} | {r['peak_growth_mib']:.0f} "
            f"| {ratio:.1f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
