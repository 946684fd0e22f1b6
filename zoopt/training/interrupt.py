"""Ctrl-C between steps: the first SIGINT asks the loop to stop after the step in flight (so the
checkpoint it writes holds a whole step); a second one interrupts at once."""
from __future__ import annotations

import contextlib
import signal
import threading


class StopRequest:
    requested = False


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after a checkpoint was written (resume from it)."""


@contextlib.contextmanager
def stop_on_interrupt(notice):
    """Yield a :class:`StopRequest` whose ``requested`` turns True on the first SIGINT (``notice()`` runs);
    outside the main thread signals cannot be caught and the request never turns True."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if stop.requested:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        stop.requested = True
        notice()

    signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = ["StopRequest", "TrainingInterrupted", "stop_on_interrupt"]
