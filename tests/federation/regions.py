"""Several region brokers of one federation on loopback, each its own OS process with
its own database, centers and libp2p host, all admitted by one throw-away root."""

from __future__ import annotations

import contextlib
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from cli.federation import LocalFederation
from tests.conftest import FAST_BROKER

# Brokers that notice within seconds: summaries re-signed every second and believed for
# three; centers lost after three.
PEER_BROKER = (*FAST_BROKER, "--republish-s", "1", "--summary-expiry-s", "3")


@contextlib.contextmanager
def regions(
    root: Path, names: tuple[str, ...], broker_args: tuple[str, ...] = PEER_BROKER
) -> Iterator[dict[str, LocalFederation]]:
    """One broker per region, started in order, each dialling those before it."""
    started: dict[str, LocalFederation] = {}
    try:
        for name in names:
            fed = LocalFederation(
                root=root / name,
                authority_root=root,
                broker_name=f"broker-{name}",
                broker_region=name,
                broker_args=broker_args,
                peering=True,
                peers=tuple(f.peer_address for f in started.values()),
            )
            started[name] = fed
            fed.__enter__()
        yield started
    finally:
        for fed in reversed(list(started.values())):
            fed.stop()


def metric(fed: LocalFederation, name: str, labels: str = "") -> float:
    """One sample of the broker's metrics (0 if absent): `labels` as exposed, with braces."""
    url = f"http://127.0.0.1:{fed.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0
