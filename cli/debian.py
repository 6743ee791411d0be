"""Debian packages installed when absent: the daemons that the tests, the benchmarks and
`icx demo --backend slurm` start on one machine (Slurm, the Docker engine), so that a
fresh machine runs the same tests as this one. Nothing that needs a daemon is skipped
when its package is missing: the package is installed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

_LOCK = Path("/tmp/icx-apt.lock")
_UPDATED = Path("/tmp/icx-apt.updated")
INSTALL_TIMEOUT_S = 600


class SetupError(RuntimeError):
    """A daemon could not be installed or started (says which, and why)."""


def ensure_debian(programs: Mapping[str, str]) -> None:
    """Install the Debian package of each program (name -> package) not on PATH. One
    install at a time on this machine (a lock), `apt-get update` once."""
    missing = {p: pkg for p, pkg in programs.items() if not _found(p)}
    if not missing:
        return
    with _LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = {p: pkg for p, pkg in missing.items() if not _found(p)}
        if not missing:
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if not _UPDATED.exists():
            _apt(["apt-get", "update", "-q"], env)
            _UPDATED.touch()
        packages = sorted(set(missing.values()))
        _apt(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env)
        still = sorted(p for p in missing if not _found(p))
        if still:
            raise SetupError(f"installed {', '.join(packages)} but {', '.join(still)} not found")


def _found(program: str) -> bool:
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is not None


def _apt(argv: list[str], env: Mapping[str, str]) -> None:
    done = subprocess.run(
        argv, env=dict(env), capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SetupError(f"{' '.join(argv[:3])} failed ({done.returncode}): {' / '.join(tail)}")
