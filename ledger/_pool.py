"""Ed25519 verification spread over worker processes.

One verification costs ~107 us of CPU and holds the GIL, so a thread pool does not help;
worker processes do. Workers start with the `spawn` method: a broker process runs gRPC
and other threads, and forking a threaded process is unsafe. A worker only answers
"does this signature verify under this public key"; which key may sign what is decided
in the calling process.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["VerifyPool"]

_KEYS: dict[bytes, Ed25519PublicKey] = {}


def _verify_chunk(items: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """(public key, message, signature) -> verifies; runs in a worker."""
    out = []
    for public, message, sig in items:
        key = _KEYS.get(public)
        if key is None:
            key = _KEYS[public] = Ed25519PublicKey.from_public_bytes(public)
        try:
            key.verify(sig, message)
        except InvalidSignature:
            out.append(False)
        else:
            out.append(True)
    return out


class VerifyPool:
    """`workers` processes, started on first use; `close` stops them."""

    MIN_ITEMS = 32
    """Fewer verifications than this are done in the calling process: shipping them to
    a worker would cost more than it saves."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn")
            )
            # Wait until every worker answers, so that start-up is not billed to a call.
            done = [self._executor.submit(_verify_chunk, []) for _ in range(self.workers)]
            for future in done:
                future.result()

    def submit(self, items: list[tuple[bytes, bytes, bytes]]) -> list[Future[list[bool]]]:
        """Start verifying `items` in about 2 x workers chunks; `collect` the futures."""
        self.start()
        assert self._executor is not None
        step = max(1, -(-len(items) // (2 * self.workers)))
        return [
            self._executor.submit(_verify_chunk, items[i : i + step])
            for i in range(0, len(items), step)
        ]

    @staticmethod
    def collect(futures: list[Future[list[bool]]]) -> list[bool]:
        out: list[bool] = []
        for future in futures:
            out.extend(future.result())
        return out

    def verify_many(self, items: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
        if len(items) < self.MIN_ITEMS:
            return _verify_chunk(items)
        return self.collect(self.submit(items))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
