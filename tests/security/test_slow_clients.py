"""#19.11: clients that trickle bytes are cut off, and connections beyond a cap are refused, so a
few slow sockets cannot hold the HTTP endpoint."""

from __future__ import annotations

import socket
import threading
import time

import httpx

from tests.support.policies import two_tier_policy, write
from tests.support.router_process import RouterProcess

KEY = "acme-key"
READ_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 16
TRICKLERS = 24


def _trickle(port: int, closed_after: list[float], stop: threading.Event) -> None:
    """Send a request one byte every 0.5 s; record when the server closed the connection."""
    started = time.monotonic()
    request = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        for byte in request * 10:
            if stop.is_set():
                return
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(1) == b"":
                    break
            except socket.timeout:
                continue  # nothing to read yet: the connection is still open
            except OSError:
                break
            time.sleep(0.5)
    closed_after.append(time.monotonic() - started)


def test_trickling_clients_are_cut_off_and_the_endpoint_keeps_serving(tier_ports, tmp_path):
    policy = write(tmp_path / "policy.yaml", two_tier_policy(tier_ports["edge"], tier_ports["cloud"], {"acme": KEY}))
    with RouterProcess(policy, tmp_path / "ledger.sqlite", "--http-read-timeout", str(READ_TIMEOUT_S),
                       "--http-max-connections", str(MAX_CONNECTIONS), http=True) as router:
        closed_after: list[float] = []
        stop = threading.Event()
        threads = [threading.Thread(target=_trickle, args=(router.http_port, closed_after, stop)) for _ in range(TRICKLERS)]
        for thread in threads:
            thread.start()
            time.sleep(0.02)
        for thread in threads:
            thread.join(timeout=READ_TIMEOUT_S + 10)
        stop.set()
        assert len(closed_after) == TRICKLERS, "some trickling connections were never closed"
        # Those over the cap are closed on accept, the rest when their read deadline passes.
        refused_at_once = [t for t in closed_after if t < 1.0]
        assert len(refused_at_once) >= TRICKLERS - MAX_CONNECTIONS
        assert max(closed_after) < READ_TIMEOUT_S + 2.0
        answer = httpx.post(f"http://127.0.0.1:{router.http_port}/v1/completions",
                            json={"model": "cascade", "prompt": "an easy one", "max_tokens": 4},
                            headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        assert answer.status_code == 200
