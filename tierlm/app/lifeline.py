"""``python -m tierlm.app.lifeline LAUNCHER_PID -- COMMAND...``: run COMMAND so it ends with its launcher.

`tierlm.app.stack` starts every service through this. The child asks the kernel for SIGTERM when
its launcher dies (``PR_SET_PDEATHSIG``, which survives ``exec``), checks the launcher is still
its parent (it may have died while this started), then becomes COMMAND. Doing the same in a
``preexec_fn`` (between fork and exec) runs Python, and with it gRPC's at-fork handlers, in a
copy of a process whose other threads may be inside gRPC; such children aborted (SIGABRT after
"epoll_wait error: Bad file descriptor") before their ``exec``. Here nothing runs before a clean
``exec``. Linux only, like the stack.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def command(launcher_pid: int, argv: list[str]) -> list[str]:
    """``argv`` wrapped so that it ends with process ``launcher_pid``."""
    return [sys.executable, "-m", "tierlm.app.lifeline", str(launcher_pid), "--", *argv]


def main(args: list[str]) -> None:
    if len(args) < 3 or args[1] != "--" or not args[0].isdigit():
        raise SystemExit("usage: python -m tierlm.app.lifeline LAUNCHER_PID -- COMMAND [ARG...]")
    launcher, argv = int(args[0]), args[2:]
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise SystemExit(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != launcher:
        raise SystemExit(f"launcher {launcher} exited before {argv[0]} started")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
