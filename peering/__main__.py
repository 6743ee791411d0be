"""`python -m peering`: one peering host in its own process, driven over stdin/stdout
with JSON lines (what the multi-process tests and the benchmark run).

    python -m peering --identity BROKER_DIR --peer-key FILE [--port N] [--peer ADDR]...

Prints {"address": ...} once listening. Then reads one command per line and answers
each with one line:
    {"publish": "text"}  -> {"version": N}
    {"status": true}     -> {"views": {origin: [version, text]}, "counts": {...}}
    {"stop": true}       -> {"stopped": true}, and exits 0
Errors end the process with a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from core.errors import IcxError
from identity.files import Credentials
from peering.config import SUMMARIES_TOPIC, PeeringConfig, peer_key_seed
from peering.host import PeerHost


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m peering", description=__doc__)
    parser.add_argument("--identity", type=Path, required=True, help="a broker's member folder")
    parser.add_argument("--peer-key", type=Path, required=True, help="libp2p key seed file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--peer", action="append", default=[], help="multiaddr to keep dialling")
    parser.add_argument("--republish-s", type=float, default=5.0)
    parser.add_argument("--silence-s", type=float, default=15.0)
    parser.add_argument("--redial-max-s", type=float, default=10.0)
    parser.add_argument("--liveness-s", type=float, default=5.0)
    parser.add_argument("--liveness-timeout-s", type=float, default=3.0)
    parser.add_argument("--test-drop-fraction", type=float, default=0.0)
    return parser.parse_args(argv)


def _status(host: PeerHost) -> dict[str, Any]:
    counts = host.counts()
    return {
        "views": {
            s.origin: [s.version, s.payload.decode("utf-8", "replace")]
            for s in host.summaries(SUMMARIES_TOPIC)
        },
        "counts": {
            "published": counts.published,
            "received": counts.received,
            "dropped": {str(r): n for r, n in counts.dropped.items()},
            "pulls": counts.pulls,
            "pull_failures": counts.pull_failures,
            "dial_failures": counts.dial_failures,
            "peers": counts.peers,
        },
    }


def _say(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _serve(args: argparse.Namespace) -> None:
    config = PeeringConfig(
        listen_host=args.host,
        listen_port=args.port,
        bootstrap=tuple(args.peer),
        peer_key_seed=peer_key_seed(args.peer_key),
        republish_s=args.republish_s,
        silence_s=args.silence_s,
        redial_max_s=args.redial_max_s,
        liveness_s=args.liveness_s,
        liveness_timeout_s=args.liveness_timeout_s,
        test_drop_fraction=args.test_drop_fraction,
    )
    async with PeerHost(config, Credentials.load(args.identity)) as host:
        _say({"address": host.address})
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return  # the parent went away
            command = json.loads(line)
            if "publish" in command:
                version = await host.publish(SUMMARIES_TOPIC, command["publish"].encode())
                _say({"version": version})
            elif "status" in command:
                _say(_status(host))
            elif "stop" in command:
                _say({"stopped": True})
                return
            else:
                _say({"error": f"unknown command {sorted(command)}"})


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    try:
        asyncio.run(_serve(args))
    except (IcxError, OSError, ValueError) as exc:
        print(f"peering: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
