"""Free TCP ports on 127.0.0.1 for servers that cannot bind port 0 themselves (Ray Serve)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
