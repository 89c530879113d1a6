"""A folder for Unix sockets, short enough for the kernel's limit.

Three things put AF_UNIX sockets under the temp folder ($TMPDIR): Ray at
``<tmp>/ray/session_<date>_<pid>/sockets/plasma_store``, vLLM at ``<tmp>/<uuid4>`` and the
router's HTTP front at ``<tmp>/tierlm-router-<random>/router.sock``. A socket path holds at most
107 bytes on Linux (103 on macOS), so a long $TMPDIR stops Ray from starting, leaves vLLM's
engine waiting for a process that could not bind, and stops the router from binding. Ray itself uses
``/tmp`` on macOS, whose per-user $TMPDIR is long; we do the same wherever the path would not fit.
"""

from __future__ import annotations

import logging
import sys
import tempfile

log = logging.getLogger(__name__)

MAX_SOCKET_PATH = (103 if sys.platform == "darwin" else 107)
# The longest paths each creates below the temp folder (a 7-digit pid for Ray's session).
RAY_SOCKET_TAIL = len("/ray/session_2026-01-01_00-00-00_000000_1234567/sockets/plasma_store")
VLLM_SOCKET_TAIL = len("/00000000-0000-0000-0000-000000000000")
ROUTER_SOCKET_TAIL = len("/tierlm-router-xxxxxxxx/router.sock")
SHORT_FALLBACK = "/tmp"


def socket_root(tail: int) -> str:
    """The temp folder when ``<temp folder><tail characters>`` fits in a socket path, else /tmp."""
    root = tempfile.gettempdir()
    if len(root.encode()) + tail <= MAX_SOCKET_PATH:
        return root
    log.info("temp folder %s is too long for Unix socket paths; sockets go under %s", root, SHORT_FALLBACK)
    return SHORT_FALLBACK
