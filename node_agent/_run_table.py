"""The agent's table of runs, on disk in its workdir (`runs.json`), so that a restarted
agent finds the jobs it launched: it asks the backend to re-attach to each, lists them in
its Hello, and meters each run exactly once.

A run enters the table after the backend started it and before the agent reports it
running; its end is written before it is metered, and `metered` after the signed record
is in the outbox. The whole table is rewritten on each change (a temporary file, fsync,
rename): it holds the center's live runs and those ended in the last few minutes.

    {"version": 1, "runs": [{"claim_id": ..., "job_id": ..., "pool_id": ...,
      "device_indices": [0, 1], "backend": "process", "backend_run_id": "4242",
      "tenant": ..., "started_at_ms": ..., "state": "running", "exit_code": null,
      "ended_at_ms": 0, "metered": false, "log_epoch": 0}]}
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
    output sequence numbers keep rising across a re-attach."""

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
    log_epoch: int = 0

    def __post_init__(self) -> None:
        if self.state not in (JobState.RUNNING, *_ENDED):
            raise InvalidConfig(f"run {self.claim_id}: state must be running or final")
        if self.state in _ENDED and self.ended_at_ms < self.started_at_ms:
            raise InvalidConfig(
                f"run {self.claim_id}: ended_at_ms {self.ended_at_ms} before "
                f"started_at_ms {self.started_at_ms}"
            )

    @property
    def ended(self) -> bool:
        return self.state in _ENDED


class RunTable:
    """The table at `path`; `rows` is what is on disk after each call returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, RunRow] = self._read()

    def put(self, row: RunRow) -> None:
        self.rows[row.claim_id] = row
        self._write()

    def drop(self, claim_id: str) -> None:
        if self.rows.pop(claim_id, None) is not None:
            self._write()

    def _read(self) -> dict[str, RunRow]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InvalidConfig(f"cannot read the run table {self.path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise InvalidConfig(f"run table {self.path}: expected version {VERSION}")
        rows: dict[str, RunRow] = {}
        for i, raw in enumerate(data.get("runs", [])):
            try:
                row = _row_from_json(raw)
            except KeyError as exc:
                raise InvalidConfig(f"run table {self.path}: row {i} has no {exc}") from exc
            except (TypeError, ValueError) as exc:
                raise InvalidConfig(f"run table {self.path}: row {i}: {exc}") from exc
            rows[row.claim_id] = row
        return rows

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = [_row_to_json(self.rows[k]) for k in sorted(self.rows)]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump({"version": VERSION, "runs": rows}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)


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
