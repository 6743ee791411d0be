"""ECharts, the one third-party script the dashboard serves: fetched once at set-up from
the npm registry as the package tarball, checked against the integrity pinned here
(the registry's `dist.integrity`, sha512), and its `dist/echarts.min.js` kept inside the
installation (`sys.prefix/share/icx/`), so the running dashboard needs no network.

`make setup` runs `python -m dashboard.assets`; the dashboard refuses to start without
the file (AssetsMissing, naming the command that installs it).
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

from dashboard.errors import AssetsCorrupt, AssetsMissing

ECHARTS_VERSION = "6.1.0"
ECHARTS_URL = f"https://registry.npmjs.org/echarts/-/echarts-{ECHARTS_VERSION}.tgz"
# The registry's dist.integrity for that tarball (npm view echarts@6.1.0 dist.integrity).
ECHARTS_INTEGRITY = (
    "sha512-q0yaFPggC9FUdsWH4blavRWFmxdrIodbkoKNAjJudAI6CA9gNPxHtV2RcZNEepZVlk4yvBYkOkbk6"
    "HIVpIyHZA=="
)
_MEMBER = "package/dist/echarts.min.js"
SETUP_HINT = "run `make setup` (or `python -m dashboard.assets`) once, with access to npm"


def echarts_path(prefix: Path | None = None) -> Path:
    """Where the installation keeps echarts.min.js (under `prefix`, default sys.prefix)."""
    base = Path(sys.prefix) if prefix is None else prefix
    return base / "share" / "icx" / f"echarts-{ECHARTS_VERSION}.min.js"


def integrity_of(data: bytes) -> str:
    """npm's Subresource-Integrity string of `data` (sha512, base64)."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def extract_echarts(tarball: bytes) -> bytes:
    """dist/echarts.min.js from the package tarball, once the tarball's integrity is
    the pinned one; AssetsCorrupt otherwise."""
    got = integrity_of(tarball)
    if got != ECHARTS_INTEGRITY:
        raise AssetsCorrupt(
            f"echarts-{ECHARTS_VERSION}.tgz: integrity {got[:24]}... is not the pinned "
            f"{ECHARTS_INTEGRITY[:24]}..."
        )
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        member = tar.extractfile(_MEMBER)
        if member is None:
            raise AssetsCorrupt(f"echarts-{ECHARTS_VERSION}.tgz has no {_MEMBER}")
        return member.read()


def install_echarts(
    prefix: Path | None = None, *, url: str = ECHARTS_URL, timeout_s: float = 60.0
) -> Path:
    """Fetch, check and install echarts.min.js unless it is there; its path."""
    target = echarts_path(prefix)
    if target.exists():
        return target
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            tarball = reply.read()
    except OSError as exc:
        raise AssetsMissing(f"cannot fetch {url}: {exc}") from exc
    script = extract_echarts(tarball)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(script)
    partial.replace(target)  # never a half-written file where the dashboard looks
    return target


def require_echarts(prefix: Path | None = None) -> Path:
    """The installed echarts.min.js; AssetsMissing saying how to install it."""
    target = echarts_path(prefix)
    if not target.exists():
        raise AssetsMissing(f"ECharts {ECHARTS_VERSION} is not installed ({target}): {SETUP_HINT}")
    return target


def main() -> int:
    try:
        print(install_echarts())
    except (AssetsMissing, AssetsCorrupt) as exc:
        print(f"icx: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
