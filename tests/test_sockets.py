"""Unix socket folders for Ray and vLLM stay under the kernel's path limit whatever $TMPDIR is."""

from __future__ import annotations

import tempfile

from tierlm.sockets import MAX_SOCKET_PATH, RAY_SOCKET_TAIL, VLLM_SOCKET_TAIL, socket_root


def test_a_short_temp_folder_is_kept(monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", "/var/tmp")
    assert socket_root(RAY_SOCKET_TAIL) == socket_root(VLLM_SOCKET_TAIL) == "/var/tmp"


def test_a_temp_folder_too_long_for_ray_sockets_falls_back_to_tmp(monkeypatch) -> None:
    long = "/home/someone/a-deeply-nested-temp-folder/tmp"
    monkeypatch.setattr(tempfile, "tempdir", long)
    assert len(long) + RAY_SOCKET_TAIL > MAX_SOCKET_PATH >= len(long) + VLLM_SOCKET_TAIL
    assert socket_root(RAY_SOCKET_TAIL) == "/tmp"
    assert socket_root(VLLM_SOCKET_TAIL) == long
