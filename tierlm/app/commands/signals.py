"""Signal handling shared by the commands that run in the foreground until told to stop."""

from __future__ import annotations

import signal
import threading


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT (Ctrl-C) sets, so the command can wait on it and clean up."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
