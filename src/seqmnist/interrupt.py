"""Stopping a training cleanly: SIGINT and SIGTERM become a flag the loop reads between batches, so
it saves a checkpoint and says how to continue (:class:`TrainingInterrupted`)."""

from __future__ import annotations

import signal
import threading
from typing import ClassVar


class Interrupt:
    """Turns SIGINT and SIGTERM into a flag the loop checks between batches."""

    # Signals a pool worker received before its training began (see remember_signals).
    received: ClassVar[list[int]] = []

    def __init__(self) -> None:
        self.signal: int | None = Interrupt.received[0] if Interrupt.received else None

    def __enter__(self) -> Interrupt:
        # Only the main thread may handle signals (Tune trains in another; it stops trials itself).
        main = threading.current_thread() is threading.main_thread()
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.signal = signum


def remember_signals() -> None:
    """For a worker process: a SIGINT or SIGTERM that arrives outside training is remembered, not
    fatal, so the next training stops at its first checkpoint instead of the worker dying."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda signum, frame: Interrupt.received.append(signum))


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; the CLI exits with 128 + signal.

    Both arguments reach Exception.args, so it pickles (a worker process can raise it to its parent)."""

    def __init__(self, signum: int, message: str):
        super().__init__(signum, message)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message
