"""The agent's table of runs, on disk in its workdir (`runs.json`), so that a restarted
agent finds the jobs it launched: it asks the backend to re-attach to each, lists them in
its Hello, and meters each run exactly once.

A run enters the table after the backend started it and before the agent reports it
running. While it runs, each metering interval's signed record goes to the outbox and
then the table notes how far the run is metered (`metered_n` records, the last ending at
`metered_to_ms`), so a restarted agent re-attached to the run goes on from there and
never bills a second twice. Its end is written before it is metered, and `metered` after
the run's last record is in the outbox. It holds the center's live runs and those ended
in the last few minutes. Each change is one line appended to a journal beside it
(`runs.json.journal`) and fsynced, so a change costs the same however many runs the
table holds; the snapshot (`runs.json`: a temporary file, fsync, rename) is rewritten
when the agent opens the table and when the journal has grown to several times the
table, then the journal starts again. A torn last line (a crash in the middle of an
append) is ignored on reading.

    {"version": 1, "runs": [{"claim_id": ..., "job_id": ..., "pool_id": ...,
      "device_indices": [0, 1], "backend": "process", "backend_run_id": "4242",
      "tenant": ..., "started_at_ms": ..., "state": "running", "exit_code": null,
      "ended_at_ms": 0, "metered": false, "metered_n": 0, "metered_to_ms": 0,
      "log_epoch": 0}]}

(`metered_n` and `metered_to_ms` are absent from tables written before runs were metered
in intervals: 0, nothing metered yet.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidConfig
from core.states import TERMINAL, JobState

VERSION = 1
_ENDED = TERMINAL


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRow:
    """One launched run. `log_epoch` counts the agent lives that followed its output, so
    output sequence numbers keep rising across a re-attach. `metered_n` records of it
    are in the outbox, the last ending at `metered_to_ms` (whole seconds after the start
    but for the run's last record); `metered` once its last one is."""

    claim_id: str
    job_id: str
    pool_id: str
    device_indices: tuple[int, ...]
    backend: str
    backend_run_id: str
    tenant: str
    started_at_ms: int
    state: JobState
    exit_code: int | None = None
    ended_at_ms: int = 0
    metered: bool = False
    metered_n: int = 0
    metered_to_ms: int = 0
    log_epoch: int = 0

    def __post_init__(self) -> None:
        if self.state not in (JobState.RUNNING, *_ENDED):
            raise InvalidConfig(f"run {self.claim_id}: state must be running or final")
        if self.metered_n < 0 or (self.metered_n and self.metered_to_ms < self.started_at_ms):
            raise InvalidConfig(
                f"run {self.claim_id}: metered_n {self.metered_n} records up to "
                f"metered_to_ms {self.metered_to_ms} must end after started_at_ms "
                f"{self.started_at_ms}"
            )
        if self.state in _ENDED and self.ended_at_ms < self.started_at_ms:
            raise InvalidConfig(
                f"run {self.claim_id}: ended_at_ms {self.ended_at_ms} before "
                f"started_at_ms {self.started_at_ms}"
            )

    @property
    def ended(self) -> bool:
        return self.state in _ENDED


# The journal is folded into the snapshot when it holds this many lines more than the
# table has rows (and at least this many).
_COMPACT_LINES = 64


class RunTable:
    """The table at `path`, taken by its agent: `rows` is what is on disk after each call
    returns. Opening it folds the journal into a fresh snapshot."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = path.with_name(path.name + ".journal")
        self.rows: dict[str, RunRow] = read_rows(path)
        self._lines = 0
        if self.rows or self.journal.exists() or self.path.exists():
            self._write()

    def put(self, row: RunRow) -> None:
        self.rows[row.claim_id] = row
        self._append({"put": _row_to_json(row)})

    def drop(self, claim_id: str) -> None:
        if self.rows.pop(claim_id, None) is not None:
            self._append({"drop": claim_id})

    def _append(self, change: dict[str, Any]) -> None:
        if self._lines >= max(_COMPACT_LINES, 2 * len(self.rows)):
            self._write()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.journal.open("a", encoding="utf-8") as f:
            f.write(json.dumps(change, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._lines += 1

    def _write(self) -> None:
        """A fresh snapshot of `rows`, then an empty journal."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = [_row_to_json(self.rows[k]) for k in sorted(self.rows)]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump({"version": VERSION, "runs": rows}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        # Only once the snapshot holds every change may the journal go.
        self.journal.unlink(missing_ok=True)
        self._lines = 0


def read_rows(path: Path) -> dict[str, RunRow]:
    """The table at `path` as a restarted agent would find it (the snapshot, then the
    journal's changes), without taking it."""
    rows = _read_snapshot(path)
    journal = path.with_name(path.name + ".journal")
    try:
        lines = journal.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        return rows
    except OSError as exc:
        raise InvalidConfig(f"cannot read the run table's journal {journal}: {exc}") from exc
    complete = lines[:-1]  # the text after the last newline is empty, or a torn append
    for n, line in enumerate(complete, start=1):
        try:
            change = json.loads(line)
            if "put" in change:
                row = _row_from_json(change["put"])
                rows[row.claim_id] = row
            else:
                rows.pop(change["drop"], None)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidConfig(f"run table journal {journal}: line {n}: {exc}") from exc
    return rows


def runs_on_disk(path: Path) -> list[dict[str, Any]]:
    """The rows at `path` (snapshot and journal) as JSON objects, without taking the table."""
    return [_row_to_json(r) for _, r in sorted(read_rows(path).items())]


def _read_snapshot(path: Path) -> dict[str, RunRow]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InvalidConfig(f"cannot read the run table {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise InvalidConfig(f"run table {path}: expected version {VERSION}")
    rows: dict[str, RunRow] = {}
    for i, raw in enumerate(data.get("runs", [])):
        try:
            row = _row_from_json(raw)
        except KeyError as exc:
            raise InvalidConfig(f"run table {path}: row {i} has no {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise InvalidConfig(f"run table {path}: row {i}: {exc}") from exc
        rows[row.claim_id] = row
    return rows


def _row_to_json(row: RunRow) -> dict[str, Any]:
    out = dataclasses.asdict(row)
    out["device_indices"] = list(row.device_indices)
    out["state"] = row.state.value
    return out


def _row_from_json(data: dict[str, Any]) -> RunRow:
    return RunRow(
        **{
            **data,
            "device_indices": tuple(int(i) for i in data["device_indices"]),
            "state": JobState(data["state"]),
        }
    )
