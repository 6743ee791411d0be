"""The Slurm backend: each icx job one Slurm batch job in the center's partition.

A job goes in with `sbatch` (its script on stdin), named `icx-<job id>`, with GRES for its
devices, in its own folder (`--chdir`), its output to `slurm-<slurm id>.out` and `.err`
there, which the run follows and delivers in order per stream. Nothing the agent holds
dies with it: a restarted agent finds its jobs again (by their comment, which names the
center) and follows each from the byte offsets it had delivered.

What Slurm says is read from `squeue --json` (slurmctld's own view: pending, running and
ended jobs, the last for MinJobAge seconds after their end) and `sinfo --json` (nodes,
their GRES and what of it is in use). One `squeue` answers every run's question of a
poll. Exit codes and states are Slurm's; no accounting storage (slurmdbd, `sacct`) is
needed. A job that ended while the agent was away for longer than MinJobAge is gone from
slurmctld, and cannot be re-attached (the broker requeues it).

The `[backend]` options of a center's config, `kind = "slurm"`:

    partition = "gpu"            # required: where icx's jobs go
    account = "icx"              # optional: sbatch --account
    slurm_conf = "/etc/slurm/slurm.conf"  # optional: SLURM_CONF for every Slurm command
    poll_s = 1.0                 # optional: how often Slurm is asked (0.05..60)
    [backend.gres]               # optional: pool id -> GRES name[:type] of its devices
    a100 = "gpu:a100"            #   (default "gpu:<the pool's accelerator>")

Devices: a pool's devices are the GRES of its kind on the partition's nodes, numbered
node by node (nodes in name order) from 0; these are the DeviceBook's indices and the
job's ICX_DEVICES. Slurm chooses the physical devices itself and sets the job's
CUDA_VISIBLE_DEVICES to them, so the backend leaves that variable to Slurm. A job runs on
one node (`--nodes=1`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidArgument, InvalidConfig
from core.types import CenterDescriptor
from node_agent.backends._process import resolve_program
from node_agent.backends._protocol import LaunchRequest, OutputSink, Run, job_environment
from node_agent.errors import CannotReattach

log = logging.getLogger("icx.agent.slurm")

JOB_PREFIX = "icx-"
_READ_BYTES = 65536
_COMMAND_TIMEOUT_S = 30.0
KILL_TIMEOUT_S = 60.0
"""How long `kill` waits for Slurm to end a job (it re-sends scancel each poll)."""

_ENDED = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED",
}  # fmt: skip
# A job Slurm stopped without an exit of its own (a cancel before it ran, a time limit):
# reported as ended by SIGTERM, the signal Slurm sends first.
_STOPPED = {"CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE"}
# Node states in which a node takes no new job; its devices are not offered.
_NODE_UP = {"IDLE", "MIXED", "ALLOCATED", "COMPLETING"}
_NODE_OUT_FLAGS = {
    "DRAIN", "DRAINING", "DRAINED", "DOWN", "FAIL", "FAILING", "MAINTENANCE", "MAINT",
    "NOT_RESPONDING", "NO_RESPOND", "POWERED_DOWN", "POWER_DOWN", "POWERING_DOWN",
    "POWERING_UP", "REBOOT_REQUESTED", "REBOOT_ISSUED", "RESERVED", "FUTURE", "INVALID",
}  # fmt: skip

_GRES_ITEM = re.compile(r"([^:,()]+)(?::([^:,()]+))?:(\d+)(?:\(([^)]*)\))?")


class SlurmError(OSError):
    """A Slurm command failed or Slurm refused a job; the message quotes Slurm. An
    OSError: the agent fails the job with the message and logs no traceback."""


# ---------------------------------------------------------------------- the options


@dataclass(frozen=True, slots=True, kw_only=True)
class SlurmOptions:
    partition: str
    account: str = ""
    slurm_conf: Path | None = None
    poll_s: float = 1.0
    # How long a submitted job may wait in Slurm's queue before the launch gives up.
    start_timeout_s: float = 300.0
    gres: Mapping[str, str]  # pool id -> GRES name[:type]

    @staticmethod
    def parse(options: Mapping[str, Any], center: CenterDescriptor) -> SlurmOptions:
        """The `[backend]` table (less `kind`); raises InvalidConfig naming the option."""
        known = {"partition", "account", "slurm_conf", "poll_s", "start_timeout_s", "gres"}
        extra = sorted(set(options) - known)
        if extra:
            raise InvalidConfig(
                f"backend.kind = 'slurm' does not take {', '.join(extra)} "
                f"(options: {', '.join(sorted(known))})"
            )
        partition = options.get("partition")
        if not isinstance(partition, str) or not partition:
            raise InvalidConfig("backend.partition is required for kind = 'slurm'")
        account = options.get("account", "")
        if not isinstance(account, str):
            raise InvalidConfig(f"backend.account must be a string, got {account!r}")
        conf = options.get("slurm_conf")
        if conf is not None and (not isinstance(conf, str) or not conf):
            raise InvalidConfig(f"backend.slurm_conf must be a path, got {conf!r}")
        if conf is not None and not Path(conf).is_file():
            raise InvalidConfig(f"backend.slurm_conf {conf}: no such file")
        poll_s = options.get("poll_s", 1.0)
        if not isinstance(poll_s, int | float) or isinstance(poll_s, bool):
            raise InvalidConfig(f"backend.poll_s must be a number, got {poll_s!r}")
        if not 0.05 <= poll_s <= 60:
            raise InvalidConfig(f"backend.poll_s must be 0.05..60 s, got {poll_s}")
        start_timeout_s = options.get("start_timeout_s", 300.0)
        if not isinstance(start_timeout_s, int | float) or isinstance(start_timeout_s, bool):
            raise InvalidConfig(
                f"backend.start_timeout_s must be a number, got {start_timeout_s!r}"
            )
        if not 1 <= start_timeout_s <= 86_400:
            raise InvalidConfig(
                f"backend.start_timeout_s must be 1..86400 s, got {start_timeout_s}"
            )
        gres_raw = options.get("gres", {})
        if not isinstance(gres_raw, dict):
            raise InvalidConfig("backend.gres must be a table: pool id -> GRES name[:type]")
        pools = {p.pool_id: p for p in center.pools}
        for pool_id, spec in gres_raw.items():
            if pool_id not in pools:
                raise InvalidConfig(f"backend.gres names pool {pool_id!r}, which is no [[pools]]")
            if not isinstance(spec, str) or not re.fullmatch(r"[\w.-]+(:[\w.-]+)?", spec):
                raise InvalidConfig(f"backend.gres.{pool_id} must be 'name[:type]', got {spec!r}")
        gres: dict[str, str] = {
            pid: gres_raw.get(pid, f"gpu:{p.accelerator}") for pid, p in pools.items()
        }
        return SlurmOptions(
            partition=partition,
            account=account,
            slurm_conf=Path(conf) if conf else None,
            poll_s=float(poll_s),
            start_timeout_s=float(start_timeout_s),
            gres=gres,
        )


# ------------------------------------------------------------------ Slurm's answers


def job_states(job: Mapping[str, Any]) -> set[str]:
    """The job's state words (Slurm 22.05 gives one string, later versions a list)."""
    state = job.get("job_state")
    if isinstance(state, list):
        return {str(s).upper() for s in state}
    return {str(state).upper()}


def job_ended(job: Mapping[str, Any]) -> bool:
    """Ended, and every process of it gone (not COMPLETING)."""
    states = job_states(job)
    return bool(states & _ENDED) and "COMPLETING" not in states


def exit_code(job: Mapping[str, Any]) -> int:
    """The ended job's exit code, negative for a signal (as a process backend's)."""
    raw = job.get("exit_code")
    code, sig = 0, 0
    if isinstance(raw, int):  # a wait status (22.05): code << 8 | signal
        code, sig = (raw >> 8) & 0xFF, raw & 0x7F
    elif isinstance(raw, dict):  # later versions: {"return_code": ..., "signal": ...}
        code = _number(raw.get("return_code"))
        sig = _number((raw.get("signal") or {}).get("id"))
    states = job_states(job)
    if states & _STOPPED:
        # Stopped by Slurm: what the job's shell made of the signal (143) says less.
        return -(sig or signal.SIGTERM)
    if sig:
        return -sig
    if "COMPLETED" in states or code:
        return code
    raise SlurmError(errno.EIO, f"Slurm ended job {job.get('job_id')} as {'/'.join(states)}")


def ended_at_ms(job: Mapping[str, Any]) -> int | None:
    """When Slurm says the ended job ended: the last millisecond of its `end_time`'s
    second (Slurm keeps whole seconds, and an end rounded down would bill the run short);
    None if it does not say."""
    end = _number(job.get("end_time"))
    return end * 1000 + 999 if end > 0 else None


def _number(value: Any) -> int:
    if isinstance(value, dict):
        return int(value.get("number", 0)) if value.get("set", True) else 0
    return int(value or 0)


def time_limit_min(job: Mapping[str, Any]) -> int | None:
    """The job's time limit in minutes; None when it has none."""
    raw = job.get("time_limit")
    if isinstance(raw, dict):
        if raw.get("infinite") or not raw.get("set", True):
            return None
        raw = raw.get("number")
    return None if raw is None else int(raw)


def _index_list(text: str) -> list[int]:
    """Slurm's `IDX:0-1,3` (or `N/A`) as indices."""
    if not text.startswith("IDX:"):
        return []
    out: list[int] = []
    for part in text[4:].split(","):
        if not part or part == "N/A":
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


@dataclass(frozen=True, slots=True)
class _Gres:
    name: str
    kind: str  # the GRES type, "" when none
    count: int
    indices: tuple[int, ...]  # node-wide indices of this name, where Slurm says them


def parse_gres(text: str) -> list[_Gres]:
    """`gpu:a100:4(S:0),gpu:t4:2` or `gpu:fake:1(IDX:0)` as items."""
    items = []
    for m in _GRES_ITEM.finditer(text or ""):
        name, kind, count, paren = m.group(1), m.group(2) or "", int(m.group(3)), m.group(4)
        items.append(_Gres(name, kind, count, tuple(_index_list(paren or ""))))
    return items


def _matches(item: _Gres, spec: str) -> bool:
    name, _, kind = spec.partition(":")
    return item.name == name and (not kind or item.kind == kind)


@dataclass(frozen=True, slots=True)
class _NodeDevices:
    """One node's devices of a pool: their node-wide GRES indices, in pool order."""

    node: str
    offset: int  # the pool index of the first
    gres_indices: tuple[int, ...]
    up: bool  # takes new jobs


def pool_layout(
    nodes: Sequence[Mapping[str, Any]], partition: str, spec: str
) -> list[_NodeDevices]:
    """The pool's devices on the partition's nodes (in name order), numbered from 0.
    A node's GRES of one name are indexed node-wide across types in the order Slurm
    lists them (as gres.conf does)."""
    layout: list[_NodeDevices] = []
    offset = 0
    for node in sorted(nodes, key=lambda n: str(n.get("name"))):
        if partition not in (node.get("partitions") or []):
            continue
        name = spec.partition(":")[0]
        start, mine = 0, list[int]()
        for item in parse_gres(str(node.get("gres", ""))):
            if item.name != name:
                continue
            if _matches(item, spec):
                mine.extend(range(start, start + item.count))
            start += item.count
        if not mine:
            continue
        layout.append(_NodeDevices(str(node.get("name")), offset, tuple(mine), _node_up(node)))
        offset += len(mine)
    return layout


def _node_up(node: Mapping[str, Any]) -> bool:
    state = node.get("state")
    words = {str(s).upper() for s in state} if isinstance(state, list) else {str(state).upper()}
    words |= {str(f).upper() for f in node.get("state_flags") or []}
    idle_cpus = node.get("idle_cpus")
    if isinstance(idle_cpus, int) and idle_cpus <= 0:
        return False  # every CPU taken: no job starts there
    return bool(words & _NODE_UP) and not words & _NODE_OUT_FLAGS


def _used(gres_text: str, spec: str) -> set[int]:
    """Node-wide indices of GRES `spec` in use, from a node's gres_used or a job's
    gres_detail."""
    used: set[int] = set()
    for item in parse_gres(gres_text):
        if _matches(item, spec):
            used.update(item.indices)
    return used


def _comment(center_id: str, pool_id: str, indices: Sequence[int]) -> str:
    return f"icx center={center_id} pool={pool_id} devices={','.join(map(str, indices))}"


def _parse_comment(text: str) -> dict[str, str]:
    if not text.startswith("icx "):
        return {}
    return dict(part.split("=", 1) for part in text.split()[1:] if "=" in part)


def _job_nodes(job: Mapping[str, Any]) -> list[str]:
    resources = job.get("job_resources") or {}
    nodes = [str(n.get("nodename")) for n in resources.get("allocated_nodes") or []]
    return nodes or [str(job.get("batch_host") or job.get("nodes") or "")]


# --------------------------------------------------------------------- the backend


@dataclass(slots=True)
class _Files:
    """A run's files: where Slurm writes its output, and what the agent has delivered
    (kept in the agent's workdir, so that a restarted agent follows on)."""

    path: Path  # <agent workdir>/slurm/<slurm job id>.json
    stdout: Path
    stderr: Path
    offsets: dict[str, int]
    collected: bool = False

    @staticmethod
    def load(path: Path) -> _Files | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return _Files(
            path,
            Path(data["stdout"]),
            Path(data["stderr"]),
            {s: int(data.get("offsets", {}).get(s, 0)) for s in ("stdout", "stderr")},
            bool(data.get("collected")),
        )

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "stdout": str(self.stdout),
                    "stderr": str(self.stderr),
                    "offsets": self.offsets,
                    "collected": self.collected,
                }
            )
        )
        os.replace(tmp, self.path)


class SlurmBackend:
    """Runs each job as a Slurm batch job; see the module's docstring."""

    name = "slurm"

    def __init__(self, options: SlurmOptions, center: CenterDescriptor, workdir: Path) -> None:
        self.options = options
        self.center = center
        self.state_dir = workdir / "slurm"
        self._time_limit = "UNLIMITED"
        self._totals: dict[str, int] = {}
        self._jobs: dict[int, dict[str, Any]] = {}
        self._jobs_at = float("-inf")
        # Each run's following task, while it follows (`aclose` ends them).
        self._following: set[asyncio.Task[dict[str, Any]]] = set()
        self._jobs_lock = asyncio.Lock()
        self._slurm_down = False
        self._uid = os.getuid()
        self.kill_timeout_s = KILL_TIMEOUT_S

    # ---------------------------------------------------------------- at the start

    def check(self) -> None:
        """Check the options against Slurm (before the agent starts): the partition
        exists, each pool's GRES is in it; learn the partition's time limit and the
        pools' device totals. Raises InvalidConfig naming what is wrong."""
        p = self.options.partition
        done = self._run_sync("scontrol", "show", "partition", p, "-o")
        if done.returncode != 0:
            if "not found" in done.stdout + done.stderr:
                names = self._partitions()
                raise InvalidConfig(
                    f"backend.partition {p!r}: no such partition in Slurm"
                    + (f" (it has {', '.join(names)})" if names else "")
                )
            raise InvalidConfig(
                f"cannot ask Slurm about partition {p!r}: {_tail(done.stderr or done.stdout)}"
            )
        fields = dict(w.split("=", 1) for w in done.stdout.split() if "=" in w)
        max_time = fields.get("MaxTime", "UNLIMITED")
        if max_time not in ("UNLIMITED", "INFINITE"):
            # Jobs run as long as the partition lets them; the estimate is no limit.
            self._time_limit = max_time
            log.warning(
                "partition %s ends jobs after MaxTime=%s: icx jobs that run longer are cut off",
                p,
                max_time,
            )
        if fields.get("State", "UP") != "UP":
            log.warning("partition %s is %s: its jobs will not start", p, fields.get("State"))
        nodes = self._nodes_sync()
        for pool in self.center.pools:
            spec = self.options.gres[pool.pool_id]
            layout = pool_layout(nodes, p, spec)
            total = sum(len(n.gres_indices) for n in layout)
            if total == 0:
                have = sorted(
                    {
                        f"{g.name}:{g.kind}" if g.kind else g.name
                        for n in nodes
                        if p in (n.get("partitions") or [])
                        for g in parse_gres(str(n.get("gres", "")))
                    }
                )
                raise InvalidConfig(
                    f"pool {pool.pool_id}: partition {p!r} has no GRES {spec}"
                    + (f" (it has {', '.join(have)})" if have else " (it has none)")
                    + "; set backend.gres"
                )
            if total != pool.devices_total:
                log.warning(
                    "pool %s: the config says %d devices, Slurm has %d (%s in partition %s); "
                    "using Slurm's",
                    pool.pool_id,
                    pool.devices_total,
                    total,
                    spec,
                    p,
                )
            self._totals[pool.pool_id] = total
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def devices_total(self) -> Mapping[str, int]:
        """Each pool's devices as Slurm counts them (at `check`)."""
        return dict(self._totals)

    def _partitions(self) -> list[str]:
        done = self._run_sync("sinfo", "-h", "-o", "%R")
        return sorted(set(done.stdout.split())) if done.returncode == 0 else []

    def _nodes_sync(self) -> list[dict[str, Any]]:
        done = self._run_sync("sinfo", "--json")
        if done.returncode != 0:
            raise InvalidConfig(f"cannot ask Slurm for its nodes: {_tail(done.stderr)}")
        try:
            nodes: list[dict[str, Any]] = _json(done.stdout, "sinfo").get("nodes", [])
        except SlurmError as exc:
            raise InvalidConfig(f"cannot ask Slurm for its nodes: {exc.strerror}") from None
        return nodes

    def _run_sync(self, *argv: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                list(argv),
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=_COMMAND_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InvalidConfig(f"cannot run {argv[0]}: {exc}") from exc

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A Slurm command's environment: PATH and SLURM_CONF, never the agent's SBATCH_*
        or SLURM_* settings (they would change what sbatch does)."""
        env = {"PATH": os.environ.get("PATH", os.defpath)}
        for key in ("HOME", "LANG", "TZ"):
            if key in os.environ:
                env[key] = os.environ[key]
        if self.options.slurm_conf is not None:
            env["SLURM_CONF"] = str(self.options.slurm_conf)
        elif "SLURM_CONF" in os.environ:
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        env.update(extra or {})
        return env

    # ---------------------------------------------------------------- the protocol

    async def launch(self, request: LaunchRequest, output: OutputSink) -> Run:
        if request.image:
            raise InvalidArgument(
                f"this center runs jobs through Slurm, without container images; "
                f"the job asks for image {request.image!r}"
            )
        request.workdir.mkdir(parents=True, exist_ok=True)
        env = job_environment(request)
        program = resolve_program(request.command, env, request.workdir)
        # Slurm sets CUDA_VISIBLE_DEVICES to the devices it chose; ICX_DEVICES stays the
        # agent's numbering.
        env.pop("CUDA_VISIBLE_DEVICES", None)
        pool_id = self._pool_of(request)
        spec = self.options.gres[pool_id]
        argv = [
            "sbatch", "--parsable",
            f"--job-name={JOB_PREFIX}{request.job_id}",
            f"--partition={self.options.partition}",
            "--nodes=1",
            f"--gres={spec}:{len(request.device_indices)}",
            f"--chdir={request.workdir}",
            f"--output={request.workdir / 'slurm-%j.out'}",
            f"--error={request.workdir / 'slurm-%j.err'}",
            "--open-mode=append",
            f"--time={self._time_limit}",
            # icx requeues a job itself; Slurm must not run it a second time.
            "--no-requeue",
            f"--comment={_comment(self.center.center_id, pool_id, request.device_indices)}",
            "--export=ALL",
        ]  # fmt: skip
        if self.options.account:
            argv.append(f"--account={self.options.account}")
        if request.memory_mb:
            argv.append(f"--mem={request.memory_mb}M")
        if request.millicpus:
            argv.append(f"--cpus-per-task={-(-request.millicpus // 1000)}")
        script = _script(env, [program, *request.command[1:]])
        out, _ = await self._command(*argv, stdin=script.encode())
        self._jobs_at = float("-inf")  # the next question sees the new job
        try:
            slurm_id = int(out.strip().split(";")[0])
        except ValueError:
            await self._cancel_named(f"{JOB_PREFIX}{request.job_id}")
            raise SlurmError(errno.EIO, f"sbatch answered no job id: {_tail(out)!r}") from None
        try:
            files = _Files(
                self.state_dir / f"{slurm_id}.json",
                request.workdir / f"slurm-{slurm_id}.out",
                request.workdir / f"slurm-{slurm_id}.err",
                {"stdout": 0, "stderr": 0},
            )
            files.save()
        except BaseException:
            # Submitted but not followed: it must not run unseen.
            with contextlib.suppress(SlurmError):
                await self._command("scancel", str(slurm_id))
            raise
        log.info("job %s is Slurm job %d", request.job_id, slurm_id)
        run = SlurmRun(self, slurm_id, files, output)
        await self._until_started(run)
        return run

    async def _until_started(self, run: SlurmRun) -> None:
        """Return once Slurm runs the job (or has ended it): the launch returns a running
        job, so the agent reports it running, and bills it, from then on, not while it
        waits in Slurm's queue. A job still pending after `start_timeout_s` (a center
        user took the devices between the claim and the submission) is cancelled and the
        launch fails saying why Slurm held it."""
        deadline = time.monotonic() + self.options.start_timeout_s
        while True:
            job = await self.job(run.slurm_id, run.known_since)
            if job is None or "PENDING" not in job_states(job):
                return
            if time.monotonic() > deadline:
                reason = str(job.get("state_reason") or "no reason given")
                with contextlib.suppress(Exception):
                    await run.kill()
                    await run.wait()
                raise SlurmError(
                    errno.ETIMEDOUT,
                    f"Slurm did not start job {run.slurm_id} within "
                    f"{self.options.start_timeout_s:g} s (pending: {reason}); cancelled",
                )
            await asyncio.sleep(self.options.poll_s)

    async def _cancel_named(self, name: str) -> None:
        """scancel this agent's jobs named `name` (a submission whose id was lost)."""
        with contextlib.suppress(SlurmError):
            await self._command("scancel", f"--name={name}", f"--user={self._uid}")

    def _pool_of(self, request: LaunchRequest) -> str:
        pool_id = request.env.get("ICX_POOL_ID", "")
        if pool_id in self.options.gres:
            return pool_id
        return self.center.pools[0].pool_id

    async def list_runs(self) -> list[str]:
        jobs = await self.jobs(fresh=True)
        runs = []
        for slurm_id, job in jobs.items():
            if not self._ours(job):
                continue
            files = _Files.load(self.state_dir / f"{slurm_id}.json")
            if files is not None and files.collected:
                continue
            runs.append(str(slurm_id))
        return sorted(runs, key=int)

    async def reattach(self, run_id: str, output: OutputSink) -> Run:
        try:
            slurm_id = int(run_id)
        except ValueError:
            raise CannotReattach(f"run {run_id}: not a Slurm job id") from None
        jobs = await self.jobs(fresh=True)
        job = jobs.get(slurm_id)
        if job is None:
            raise CannotReattach(
                f"run {run_id}: Slurm no longer knows this job (ended more than MinJobAge ago?)"
            )
        if not self._ours(job):
            raise CannotReattach(f"run {run_id}: this Slurm job is not this agent's")
        files = _Files.load(self.state_dir / f"{slurm_id}.json")
        if files is None:  # submitted, but the agent died before it noted the job
            files = _Files(
                self.state_dir / f"{slurm_id}.json",
                Path(str(job.get("standard_output"))),
                Path(str(job.get("standard_error"))),
                {"stdout": 0, "stderr": 0},
            )
        # `collected` is no refusal: the previous agent may have died between following
        # the job to its end and noting that end in its run table. Slurm still knows
        # the job, so it is followed again (its output all delivered) to the same end.
        return SlurmRun(self, slurm_id, files, output)

    async def aclose(self) -> None:
        """Stop following the runs (their Slurm jobs go on, for the next agent). Each
        following task is cancelled and waited for here: left to the event loop's final
        cancel, a task starting squeue at that moment has asyncio's own task that connects
        the command's pipes cancelled with it, and the command's end is never reported."""
        following = list(self._following)
        for task in following:
            task.cancel()
        await asyncio.gather(*following, return_exceptions=True)

    def _ours(self, job: Mapping[str, Any]) -> bool:
        """Submitted by this agent: by its user (anyone may name a job `icx-...` and
        write an icx comment), with its prefix and its center's comment."""
        return (
            job.get("user_id") == self._uid
            and str(job.get("name", "")).startswith(JOB_PREFIX)
            and _parse_comment(str(job.get("comment", ""))).get("center") == self.center.center_id
        )

    # ---------------------------------------------------------------- capacity

    async def outside_use(self) -> Mapping[str, frozenset[int]]:
        """Per pool, the devices not available to icx: those the center's own jobs
        hold, and every device of a node that takes no new job (down, drained, all its
        CPUs taken), less those icx's own jobs hold. The indices are Slurm's (node by
        node, as the pool's layout numbers them), and only their count means anything
        to the agent: Slurm picks the physical devices of icx's jobs itself, so the
        agent places them away from the devices its claims hold
        (`DeviceBook.set_outside(counted=True)`)."""
        out, _ = await self._command("sinfo", "--json")
        nodes = _json(out, "sinfo").get("nodes", [])
        jobs = await self.jobs()
        by_name = {str(n.get("name")): n for n in nodes}
        result: dict[str, frozenset[int]] = {}
        for pool in self.center.pools:
            spec = self.options.gres[pool.pool_id]
            own: dict[str, set[int]] = {}  # node -> GRES indices icx's jobs hold there
            for job in jobs.values():
                # Pending ones too: they hold nothing in Slurm yet, and what the agent
                # reserved for them is held in its book.
                if job_ended(job) or not self._ours(job):
                    continue
                if _parse_comment(str(job.get("comment", ""))).get("pool") != pool.pool_id:
                    continue
                for detail, node in zip(
                    job.get("gres_detail") or [], _job_nodes(job), strict=False
                ):
                    own.setdefault(node, set()).update(_used(str(detail), spec))
            outside: set[int] = set()
            for nd in pool_layout(nodes, self.options.partition, spec):
                if nd.up:
                    taken = _used(str(by_name.get(nd.node, {}).get("gres_used", "")), spec)
                else:
                    taken = set(nd.gres_indices)
                taken -= own.get(nd.node, set())
                outside.update(
                    nd.offset + position
                    for position, gres_index in enumerate(nd.gres_indices)
                    if gres_index in taken
                )
            result[pool.pool_id] = frozenset(outside)
        return result

    # ---------------------------------------------------------------- Slurm's view

    async def jobs(self, fresh: bool = False) -> dict[int, dict[str, Any]]:
        """Every job slurmctld knows, by id: one `squeue --json` a poll, shared by
        every run that asks within it. Raises SlurmError when Slurm does not answer."""
        async with self._jobs_lock:
            asked_at = time.monotonic()
            if fresh or asked_at - self._jobs_at >= self.options.poll_s / 2:
                out, _ = await self._command("squeue", "--json")
                self._jobs = {int(j["job_id"]): j for j in _json(out, "squeue").get("jobs", [])}
                self._jobs_at = asked_at
            return self._jobs

    async def job(self, slurm_id: int, known_since: float) -> dict[str, Any] | None:
        """The job as slurmctld last said; None when an answer asked for after
        `known_since` (monotonic: when the job was known to exist) does not hold it.
        While Slurm does not answer, asks again each poll (and logs once when it stops
        answering and once when it answers again)."""
        while True:
            try:
                jobs = await self.jobs()
                if slurm_id not in jobs and self._jobs_at <= known_since:
                    jobs = await self.jobs(fresh=True)  # asked before the job was there
            except SlurmError as exc:
                if not self._slurm_down:
                    log.warning("Slurm does not answer (retrying every %s s): %s",
                                self.options.poll_s, exc)  # fmt: skip
                    self._slurm_down = True
                await asyncio.sleep(self.options.poll_s)
                continue
            if self._slurm_down:
                log.info("Slurm answers again")
                self._slurm_down = False
            return jobs.get(slurm_id)

    async def _command(self, *argv: str, stdin: bytes | None = None) -> tuple[str, str]:
        """Run a Slurm command; its stdout and stderr, or SlurmError quoting Slurm."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(),
            )
        except OSError as exc:
            raise SlurmError(exc.errno or errno.EIO, f"cannot run {argv[0]}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), _COMMAND_TIMEOUT_S)
        except TimeoutError:
            await _stop(proc)
            raise SlurmError(errno.ETIMEDOUT, f"{argv[0]} did not answer") from None
        except asyncio.CancelledError:
            # The caller gave up (a bounded kill, a capacity refresh): leave no command.
            await _stop(proc)
            raise
        if proc.returncode != 0:
            raise SlurmError(errno.EIO, f"{argv[0]}: {_tail(err.decode(errors='replace'))}")
        return out.decode(errors="replace"), err.decode(errors="replace")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Kill a command given up on and wait for its end. Its output is read to the end,
    not left: a pipe whose reader stopped (more unread output than asyncio buffers, as
    squeue --json on a busy cluster writes) never closes, and asyncio waits for the pipes
    to close before it reports the exit, so `wait` alone would wait forever."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.communicate()


def _script(env: Mapping[str, str], argv: Sequence[str]) -> str:
    lines = ["#!/bin/sh", "# icx: the job's environment, then the job itself"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
    return "\n".join(lines) + "\n"


def _json(text: str, command: str) -> dict[str, Any]:
    """A Slurm command's `--json` answer; SlurmError when it is not JSON."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SlurmError(errno.EIO, f"{command} --json answered no JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SlurmError(errno.EIO, f"{command} --json answered no JSON object")
    return data


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


# ------------------------------------------------------------------------- a run


class SlurmRun:
    """One Slurm job followed: its output delivered from the files Slurm writes, its end
    from squeue."""

    def __init__(self, backend: SlurmBackend, slurm_id: int, files: _Files, output: OutputSink):
        self._backend = backend
        self._id = slurm_id
        self._files = files
        self._output = output
        self._known_since = time.monotonic()
        self._last: dict[str, Any] | None = None
        self._follow = asyncio.create_task(self._follow_output())  # owned: awaited in wait
        backend._following.add(self._follow)
        self._follow.add_done_callback(backend._following.discard)

    @property
    def run_id(self) -> str:
        return str(self._id)

    @property
    def slurm_id(self) -> int:
        return self._id

    @property
    def known_since(self) -> float:
        """When this agent first knew the job (monotonic): how long Slurm may be slow to
        list it."""
        return self._known_since

    @property
    def ended_at_ms(self) -> int | None:
        """When Slurm ended the job (after `wait` returned): the end a restarted agent
        bills, not the moment it came back and found the job over."""
        return None if self._last is None else ended_at_ms(self._last)

    async def wait(self) -> int:
        job = await self._follow
        code = exit_code(job)
        self._files.collected = True
        with contextlib.suppress(OSError):
            self._files.save()
        return code

    async def kill(self) -> None:
        """scancel, then wait until Slurm says the job ended (its processes gone),
        sending scancel again each poll (one may be lost or refused while slurmctld is
        busy). Raises SlurmError when the job has not ended after `kill_timeout_s`."""
        backend = self._backend
        try:
            async with asyncio.timeout(backend.kill_timeout_s):
                while True:
                    job = await backend.job(self._id, self._known_since)
                    if job is None or job_ended(job):
                        return
                    if "COMPLETING" not in job_states(job):
                        with contextlib.suppress(SlurmError):  # squeue tells, next round
                            await backend._command("scancel", str(self._id))
                        backend._jobs_at = float("-inf")
                    await asyncio.sleep(backend.options.poll_s)
        except TimeoutError:
            raise SlurmError(
                errno.ETIMEDOUT,
                f"Slurm job {self._id} has not ended {backend.kill_timeout_s:g} s after scancel",
            ) from None

    async def _follow_output(self) -> dict[str, Any]:
        """Deliver new output each poll until the job ended and all of it is delivered;
        the job as Slurm last said. Raises SlurmError when Slurm forgets the job."""
        while True:
            job = await self._backend.job(self._id, self._known_since)
            if job is not None:
                self._last = job
            ended = job is None or job_ended(job)
            await self._deliver()
            if job is None:
                raise SlurmError(errno.ESRCH, f"Slurm no longer knows job {self._id}")
            if ended:
                return job
            await asyncio.sleep(self._backend.options.poll_s)

    async def _deliver(self) -> None:
        files = self._files
        for stream, path in (("stdout", files.stdout), ("stderr", files.stderr)):
            while True:
                try:
                    with path.open("rb") as f:
                        f.seek(files.offsets[stream])
                        data = f.read(_READ_BYTES)
                except FileNotFoundError:
                    break  # not yet written (pending), or nothing to write
                if not data:
                    break
                await self._output(stream, data)
                files.offsets[stream] += len(data)
                files.save()
