"""knn-vote on tiny hand-made pools, where the right vote is known."""

from __future__ import annotations

import numpy as np
import pytest
from tierlm.router.nollm.knn import KnnVote


def unit(*angles_deg: float) -> np.ndarray:
    """Unit vectors in the plane at the given angles."""
    a = np.radians(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_majority_of_nearest_wins_with_share_and_margin() -> None:
    pool = unit(0, 5, 10, 15, 90, 95)
    knn = KnnVote(pool, ["up", "up", "down", "up", "down", "down"], k=4)
    (pred,) = knn.predict(unit(7))
    # Nearest four: 5, 10, 0, 15 -> up, down, up, up.
    assert pred.label == "up"
    assert pred.votes == {"down": 1, "up": 3}
    assert pred.vote_share == pytest.approx(0.75)
    assert pred.margin == pytest.approx(0.5)
    assert pred.neighbours == (1, 2, 0, 3)


def test_tie_goes_to_the_larger_summed_similarity() -> None:
    pool = unit(0, 2, 40, 44, 180)
    # Query at 10: 'near' voters at 10 and 8 degrees away beat 'far' voters at 30 and 34.
    knn = KnnVote(pool, ["near", "near", "far", "far", "other"], k=4, labels=["far", "near", "other"])
    (pred,) = knn.predict(unit(10))
    assert pred.votes == {"far": 2, "near": 2, "other": 0}
    assert pred.label == "near"
    assert pred.margin == 0.0


def test_exclude_leaves_the_query_row_out() -> None:
    pool = unit(0, 1, 30, 31, 32)
    labels = ["a", "b", "b", "b", "b"]
    knn = KnnVote(pool, labels, k=1)
    assert knn.predict(pool[:1])[0].label == "a"
    loo = knn.predict(pool[:1], exclude=[0])[0]
    assert loo.label == "b" and loo.neighbours == (1,)


def test_batch_equals_one_by_one() -> None:
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(50, 8)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    labels = rng.choice(["up", "down", "none"], size=50).tolist()
    knn = KnnVote(pool, labels, k=5)
    batch = knn.predict(pool[:10], chunk=3)
    assert batch == [knn.predict(pool[i : i + 1])[0] for i in range(10)]


def test_rejects_bad_arguments() -> None:
    pool = unit(0, 10, 20)
    with pytest.raises(ValueError, match="k="):
        KnnVote(pool, ["a", "b", "c"], k=3)
    with pytest.raises(ValueError, match="embeddings"):
        KnnVote(pool, ["a", "b"], k=1)
    with pytest.raises(ValueError, match="not in"):
        KnnVote(pool, ["a", "b", "c"], k=1, labels=["a", "b"])
