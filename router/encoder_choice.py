"""The sentence encoder a policy's ``encoder`` setting names, for serving and for the offline tools.

``minilm`` (the default): all-MiniLM-L6-v2. The router serves its int8 ONNX graph and rescores
the few decisions too close to a threshold with the float32 one; the offline tools (collect,
train, fit, eval) run it in torch with the on-disk embedding cache. Its scorers load with either.

``static``: the table distilled from MiniLM and fitted to the policy's ``pool``
(:mod:`tierlm.router.static_encoder`), 0.08 ms of CPU per query against int8 MiniLM's 5.1 ms
(bench/results/encoders.json). The same table serves and trains, so there is nothing to
rescore; scorers trained with it record its id (which names the pool) and load with nothing else.
"""

from __future__ import annotations

from pathlib import Path

from tierlm.config import Policy
from tierlm.router.embeddings import CachingEncoder, offline_encoder
from tierlm.router.workload import load_workload

ENCODERS = ("minilm", "static")


def static_for(pool) -> CachingEncoder:
    """The static encoder fitted to the queries of the workload file ``pool``."""
    from tierlm.router.static_encoder import StaticEncoder

    return StaticEncoder.for_pool([row.query for row in load_workload(pool)])


def serving_encoder(policy: Policy) -> CachingEncoder:
    """What the router embeds every query with."""
    if policy.encoder == "static":
        return static_for(policy.pool)
    from tierlm.router.onnx_encoder import OnnxEncoder

    return OnnxEncoder(threads=1)


def rescores(policy: Policy) -> bool:
    """Whether the serving encoder approximates another one that near-threshold scores are
    recomputed with (:func:`exact_encoder`)."""
    return policy.encoder == "minilm"


def exact_encoder() -> CachingEncoder:
    """MiniLM exactly (float32 ONNX): what a near-threshold int8 score is recomputed with."""
    from tierlm.router.onnx_encoder import OnnxEncoder

    return OnnxEncoder(precision="float32", threads=1)


def encoder_key(policy: Policy) -> str:
    """Policies with the same key embed identically: a reloaded policy with another key (another
    encoder, or a static one whose pool file changed) needs another encoder."""
    if policy.encoder != "static":
        return "minilm"
    pool = Path(policy.pool).stat()
    return f"static:{policy.pool}:{pool.st_mtime_ns}:{pool.st_size}"


def offline_policy_encoder(policy: Policy | None, threads: int | None = None) -> CachingEncoder:
    """The encoder offline tools use for ``policy`` (MiniLM in torch, cached, without one)."""
    if policy is not None and policy.encoder == "static":
        return static_for(policy.pool)
    return offline_encoder(threads)
