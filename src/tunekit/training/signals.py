"""SIGTERM/SIGINT as a request to stop after the current step (cluster preemption)."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Iterator, Sequence

__all__ = ["ShutdownRequest", "graceful_shutdown"]


@dataclass
class ShutdownRequest:
    """Set by the handler; the loop polls ``requested`` after each optimizer step."""

    requested: bool = False
    signum: int | None = None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "none"


@contextmanager
def graceful_shutdown(
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT), enabled: bool = True
) -> Iterator[ShutdownRequest]:
    """Install handlers that turn the first SIGTERM/SIGINT into a stop request.

    A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt at once. Previous handlers are
    restored on exit. Outside the main thread (where Python cannot install handlers) or with
    ``enabled=False`` this yields a request that is never set.
    """
    request = ShutdownRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if request.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.requested = True
        request.signum = signum
        print(
            f"\ntunekit: received {signal.Signals(signum).name}: finishing the current step, "
            "saving a checkpoint and exiting (Ctrl-C again to stop at once).",
            file=sys.stderr,
            flush=True,
        )

    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
