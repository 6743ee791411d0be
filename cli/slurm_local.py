"""A one-node Slurm cluster on this machine, for the tests, the demo and the benchmarks:
munged, slurmctld and `slurmd -D` as children of this process, on private ports, with a
private state folder, fake GPUs and a private munge socket and key. Nothing of the
machine's own Slurm or munge (if any) is used or touched.

The fake GPUs are GRES `gpu:<gres_type>` whose `gres.conf` files are character devices
made with `mknod` (Slurm refuses regular files); jobs see CUDA_VISIBLE_DEVICES as Slurm
sets it for real GPUs. Requires root (slurmd runs jobs as their users, munged and mknod
need it) and the Debian packages `slurmctld slurmd slurm-client munge`.

    with LocalSlurm(Path("/tmp/slurm")) as slurm:
        slurm.run("sbatch", "--wrap", "true")
        slurm.env   # {"SLURM_CONF": ...}: what a Slurm command needs to find this cluster
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from core.errors import Unavailable
from core.ports import free_port
from node_agent.backends._slurm import job_ended

PROGRAMS = {
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
}
"""The programs a local cluster needs, and the Debian package of each."""

_SBIN = ("/usr/sbin", "/sbin")


def _program(name: str) -> str:
    path = os.environ.get("PATH", os.defpath) + ":" + ":".join(_SBIN)
    found = shutil.which(name, path=path)
    if found is None:
        package = PROGRAMS.get(name, name)
        raise Unavailable(f"{name} is not installed (Debian package {package})")
    return found


@dataclass(slots=True)
class _Daemon:
    name: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]


@dataclass(slots=True, kw_only=True)
class LocalSlurm:
    """A cluster of one node `node` with `gpus` fake GPUs `gpu:<gres_type>` and `cpus`
    CPUs in partition `partition`, under `root` (made if absent, reused if present)."""

    root: Path
    gpus: int = 4
    gres_type: str = "fake"
    cpus: int = 16
    partition: str = "icx"
    node: str = "icxnode"
    ctld_port: int = 0
    slurmd_port: int = 0
    _daemons: list[_Daemon] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a Slurm command needs in its environment to use this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def __enter__(self) -> LocalSlurm:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        """The daemons' process ids (munged, slurmctld, slurmd)."""
        return [d.proc.pid for d in self._daemons]

    def backend_toml(self, pool_ids: Sequence[str], poll_s: float = 0.2) -> str:
        """A center config's `[backend]` table that runs its jobs on this cluster, each
        of `pool_ids` on its fake GPUs."""
        lines = [
            "",
            "[backend]",
            'kind = "slurm"',
            f"partition = {json.dumps(self.partition)}",
            f"slurm_conf = {json.dumps(str(self.conf))}",
            f"poll_s = {poll_s}",
            "[backend.gres]",
            *(f"{json.dumps(p)} = {json.dumps('gpu:' + self.gres_type)}" for p in pool_ids),
        ]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ start, stop

    def start(self, timeout_s: float = 30.0) -> None:
        """Write the configuration, start munged, slurmctld and slurmd, and return once
        the node is idle. Raises Unavailable (naming the daemon and its log) when one
        does not come up; whatever started is stopped again."""
        if os.geteuid() != 0:
            raise Unavailable("a local Slurm cluster needs root (slurmd, munged, mknod)")
        programs = {name: _program(name) for name in ("munged", "slurmctld", "slurmd")}
        try:
            self._write_files()
            munge_dir = self.munge_socket.parent
            self._spawn(
                "munged",
                [
                    programs["munged"], "--foreground", "--force",
                    f"--socket={self.munge_socket}",
                    f"--key-file={munge_dir / 'munge.key'}",
                    f"--pid-file={munge_dir / 'munged.pid'}",
                    f"--seed-file={munge_dir / 'munged.seed'}",
                    f"--log-file={self.root / 'log' / 'munged.log'}",
                ],
            )  # fmt: skip
            self._wait(lambda: self.munge_socket.exists(), timeout_s, "munged")
            self._spawn("slurmctld", [programs["slurmctld"], "-D", "-f", str(self.conf)])
            self._spawn("slurmd", [programs["slurmd"], "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait(lambda: self.node_state() == "idle", timeout_s, "the node to be idle")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 15.0) -> None:
        """Cancel every job, wait (bounded) for them to end, stop the daemons (TERM,
        then KILL) and reap them. Safe to call twice."""
        if not self._daemons:
            return
        if any(d.name == "slurmctld" and d.proc.poll() is None for d in self._daemons):
            with contextlib.suppress(Exception):
                self._cancel_all(timeout_s)
        for daemon in reversed(self._daemons):
            if daemon.proc.poll() is None:
                daemon.proc.send_signal(signal.SIGTERM)
            try:
                daemon.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait()
            daemon.log.close()
        self._daemons.clear()

    def _cancel_all(self, timeout_s: float) -> None:
        ids = [str(j["job_id"]) for j in self.jobs() if not job_ended(j)]
        if not ids:
            return
        self.run("scancel", *ids)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(job_ended(j) for j in self.jobs()):
                return
            time.sleep(0.1)

    # ------------------------------------------------------------------ commands

    def run(self, *argv: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """A Slurm command against this cluster (check=False: the caller reads rc).
        Raises Unavailable when it cannot run or does not answer in `timeout_s`."""
        try:
            return subprocess.run(
                list(argv),
                env={**os.environ, **self.env},
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{argv[0]} did not answer in {timeout_s:g} s") from None
        except OSError as exc:
            raise Unavailable(f"cannot run {argv[0]}: {exc}") from None

    def jobs(self) -> list[dict[str, Any]]:
        """Every job slurmctld knows (`squeue --json`), ended ones included."""
        done = self.run("squeue", "--json")
        if done.returncode != 0:
            raise Unavailable(f"squeue failed: {done.stderr.strip()}")
        try:
            jobs: list[dict[str, Any]] = json.loads(done.stdout)["jobs"]
        except (ValueError, KeyError, TypeError) as exc:
            raise Unavailable(f"squeue --json answered no jobs: {exc}") from None
        return jobs

    def node_state(self) -> str:
        """The node's state as sinfo says it (idle, mixed, drained, ...); "" when Slurm
        does not answer yet."""
        try:
            done = self.run("sinfo", "--json", timeout_s=10)
            nodes = json.loads(done.stdout).get("nodes", []) if done.returncode == 0 else []
        except (Unavailable, ValueError, AttributeError):
            return ""  # not answering (yet)
        for node in nodes:
            if node.get("name") == self.node:
                return str(node.get("state", ""))
        return ""

    # ------------------------------------------------------------------ internals

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.root / "log" / f"{name}.out").open("ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
        )
        self._daemons.append(_Daemon(name, proc, log))

    def _wait(self, ready: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            for daemon in self._daemons:
                if daemon.proc.poll() is not None:
                    raise Unavailable(
                        f"{daemon.name} exited ({daemon.proc.returncode}) while waiting for "
                        f"{what}; see {self.root / 'log'}"
                    )
            if time.monotonic() > deadline:
                raise Unavailable(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.05)

    def _write_files(self) -> None:
        for sub in ("munge", "state", "spool", "log", "dev"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        (self.root / "spool" / self.node).mkdir(exist_ok=True)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        for i in range(self.gpus):
            dev = self.root / "dev" / f"gpu{i}"
            if not dev.exists():
                # /dev/null's numbers: a character device that is harmless to open.
                os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        self.ctld_port = self.ctld_port or free_port()
        self.slurmd_port = self.slurmd_port or free_port()
        r = self.root
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(
            f"""# A one-node cluster for icx's tests and demo (cli/slurm_local.py).
ClusterName=icxlocal
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}/%n
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=2
MinJobAge=300
# Schedule a batch job when it is submitted (the default waits up to 3 s to batch them).
SchedulerParameters=batch_sched_delay=0
GresTypes=gpu
NodeName={self.node} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} \
RealMemory=1000 Gres=gpu:{self.gres_type}:{self.gpus} State=UNKNOWN
# DefaultTime is short on purpose: a job submitted without its own --time is cut off
# after a minute, so the tests see that icx's jobs are not.
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE \
DefaultTime=00:01:00 State=UP
"""
        )
        last = self.gpus - 1
        (r / "gres.conf").write_text(
            f"NodeName={self.node} Name=gpu Type={self.gres_type} File={r / 'dev'}/gpu[0-{last}]\n"
            if self.gpus > 1
            else f"NodeName={self.node} Name=gpu Type={self.gres_type} File={r / 'dev'}/gpu0\n"
        )
