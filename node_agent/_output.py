"""A job's output: all of it in files in the job's folder, a bounded part of it forwarded
to the broker.

Every byte a run writes is appended to `icx-stdout.log` or `icx-stderr.log` in the job's
folder, bounded only by the disk (the job's own files share the folder, hence the
prefix). The broker keeps only the first part of a job's output (1 MiB by default) and
drops a center's chunks past a rate (500 a second, bursts of 1,000), so the agent
forwards at most `stream_max_bytes` of each job, in pieces of at most `CHUNK_BYTES`,
paced by one `Pace` for the whole center well under the broker's rate; past that it
sends one note saying where the rest is, and then only writes the files. Memory stays
bounded: one piece at a time per stream, whatever the job writes.

The pace waits (which holds the job's pipe, and so the job, for a moment) only while a
job is within its forwarded part; past it the job's output goes to disk at disk speed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("icx.agent")

CHUNK_BYTES = 64 * 1024
"""The largest piece of output in one message to the broker."""

STREAM_MAX_BYTES = 2 * 1024 * 1024
"""How much of a job's output (both streams) the agent forwards by default: more than the
broker's default cap (1 MiB), which then marks the truncation itself."""

CHUNKS_PER_S = 200
"""The center's pace of output chunks: well under the broker's 500 a second."""

CHUNK_BURST = 400

FILES = {"stdout": "icx-stdout.log", "stderr": "icx-stderr.log"}

Send = Callable[[str, bytes], None]
"""Hands one piece of output (stream, data) to the link."""


class Pace:
    """A token bucket for output chunks, shared by the center's jobs: at most `rate_per_s`
    a second on average and `burst` at once. It runs on the event loop's monotonic
    time, not the agent's clock: it spaces messages in real time, records nothing, and a
    test's manual clock must not stop the output."""

    def __init__(self, rate_per_s: int = CHUNKS_PER_S, burst: int = CHUNK_BURST) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at: float | None = None

    async def take(self) -> None:
        """Wait until a chunk may go, and count it."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if self._at is not None:
                self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / self.rate_per_s)


class JobOutput:
    """The output of one run of job `job_id`, written to `folder` and forwarded through
    `send`. `write` is the backend's output sink; it never raises: a file that cannot be
    written is logged once and the output still goes to the broker."""

    def __init__(
        self,
        folder: Path,
        *,
        job_id: str,
        send: Send,
        pace: Pace,
        stream_max_bytes: int = STREAM_MAX_BYTES,
    ) -> None:
        self.folder = folder
        self.job_id = job_id
        self._send = send
        self._pace = pace
        self.stream_max_bytes = stream_max_bytes
        self.forwarded_bytes = 0
        self.written_bytes = 0
        self._files: dict[str, BinaryIO] = {}
        self._disk_failed = False
        self._closed = False
        self._noted = False

    async def write(self, stream: str, data: bytes) -> None:
        await self._keep(stream, data)
        await self._forward(stream, data)

    def close(self) -> None:
        """Close the files; output that still arrives is only forwarded."""
        self._closed = True
        for f in self._files.values():
            try:
                f.close()
            except OSError as exc:
                log.error("job %s: closing its output file failed: %s", self.job_id, exc)
        self._files.clear()

    async def _keep(self, stream: str, data: bytes) -> None:
        if self._disk_failed or self._closed:
            return
        try:
            await asyncio.to_thread(self._append, stream, data)
        except (OSError, ValueError) as exc:
            self._disk_failed = True
            log.error(
                "job %s: cannot keep its output in %s (%s); only what is forwarded to the "
                "broker remains",
                self.job_id,
                self.folder,
                exc,
            )
            return
        self.written_bytes += len(data)

    def _append(self, stream: str, data: bytes) -> None:
        f = self._files.get(stream)
        if f is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            # Unbuffered: what the job wrote is in the kernel's hands even if the agent dies.
            f = self._files[stream] = open(self.folder / FILES[stream], "ab", buffering=0)  # noqa: SIM115
        view = memoryview(data)
        while view:
            n = f.write(view)
            if not n:
                raise OSError(f"short write to {f.name!r}")
            view = view[n:]

    async def _forward(self, stream: str, data: bytes) -> None:
        room = self.stream_max_bytes - self.forwarded_bytes
        part = data[: max(room, 0)]
        for start in range(0, len(part), CHUNK_BYTES):
            piece = part[start : start + CHUNK_BYTES]
            await self._pace.take()
            self._send(stream, piece)
            self.forwarded_bytes += len(piece)
        if len(part) < len(data) and not self._noted:
            self._noted = True
            await self._pace.take()
            self._send(
                stream,
                (
                    f"\n[icx agent: output past {self.stream_max_bytes} bytes is not "
                    f"forwarded; the center keeps all of it in the job's folder, "
                    f"{FILES['stdout']} and {FILES['stderr']}]\n"
                ).encode(),
            )
