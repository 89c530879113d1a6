"""Cascade evaluation on tiny splits whose numbers are worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tierlm.router.learn.cascade_eval import (
    CascadeData,
    CascadePolicy,
    TierOutcomes,
    evaluate_cascade,
    evaluate_oracle,
    evaluate_single_tiers,
)


@pytest.fixture
def two_tiers() -> CascadeData:
    return CascadeData(
        {
            "edge": TierOutcomes(correct=[1, 0, 1, 0], score=[0.9, 0.8, 0.4, 0.2], cost=[1, 1, 1, 1],
                                 fail_prob=[0.1, 0.9, 0.2, 0.7]),
            "cloud": TierOutcomes(correct=[1, 1, 0, 1], score=[0.5] * 4, cost=[10, 10, 10, 10]),
        }
    )


def test_a_threshold_equal_to_the_score_accepts(two_tiers: CascadeData) -> None:
    # q0, q1 kept by edge (0.8 >= 0.8), q2, q3 escalated: right on q0 and q3.
    r = evaluate_cascade(two_tiers, CascadePolicy(("edge", "cloud"), {"edge": 0.8}))
    assert r.accuracy == 0.5
    assert r.cost_per_query == (1 + 1 + 11 + 11) / 4
    assert dict(r.answered) == {"edge": 0.5, "cloud": 0.5}
    assert dict(r.called) == {"edge": 1.0, "cloud": 0.5}

    r = evaluate_cascade(two_tiers, CascadePolicy(("edge", "cloud"), {"edge": 0.85}))
    assert r.accuracy == 0.75
    assert r.cost_per_query == (1 + 11 + 11 + 11) / 4


def test_skip_threshold_sends_queries_past_a_tier_unpaid(two_tiers: CascadeData) -> None:
    # fail_prob >= 0.7 skips edge for q1 and q3; q2 is tried on edge, rejected, escalated.
    policy = CascadePolicy(("edge", "cloud"), {"edge": 0.8}, {"edge": 0.7})
    r = evaluate_cascade(two_tiers, policy)
    assert r.accuracy == 0.75
    assert r.cost_per_query == (1 + 10 + 11 + 10) / 4
    assert dict(r.called) == {"edge": 0.5, "cloud": 0.75}
    assert dict(r.answered) == {"edge": 0.25, "cloud": 0.75}


def test_three_stages() -> None:
    data = CascadeData(
        {
            "a": TierOutcomes(correct=[0, 1, 0], score=[0.2, 0.9, 0.5], cost=[1, 1, 1]),
            "b": TierOutcomes(correct=[1, 0, 0], score=[0.9, 0.1, 0.3], cost=[2, 2, 2]),
            "c": TierOutcomes(correct=[1, 1, 1], score=[0.0, 0.0, 0.0], cost=[4, 4, 4]),
        }
    )
    r = evaluate_cascade(data, CascadePolicy(("a", "b", "c"), {"a": 0.5, "b": 0.5}))
    assert (r.accuracy, r.cost_per_query) == (pytest.approx(2 / 3), pytest.approx(5 / 3))
    r = evaluate_cascade(data, CascadePolicy(("a", "b", "c"), {"a": 0.6, "b": 0.5}))
    assert (r.accuracy, r.cost_per_query) == (1.0, pytest.approx(11 / 3))
    assert dict(r.answered) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert dict(r.called) == pytest.approx({"a": 1.0, "b": 2 / 3, "c": 1 / 3})


def test_single_tiers_and_oracle(two_tiers: CascadeData) -> None:
    singles = evaluate_single_tiers(two_tiers)
    assert (singles["edge"].accuracy, singles["edge"].cost_per_query) == (0.5, 1.0)
    assert (singles["cloud"].accuracy, singles["cloud"].cost_per_query) == (0.75, 10.0)
    oracle = evaluate_oracle(two_tiers)
    # Edge for q0, q2; cloud for q1, q3; the oracle pays only the tier it picks.
    assert (oracle.accuracy, oracle.cost_per_query) == (1.0, 5.5)
    assert dict(oracle.answered) == {"edge": 0.5, "cloud": 0.5}


def test_oracle_sends_hopeless_queries_to_the_cheapest_tier() -> None:
    data = CascadeData(
        {
            "big": TierOutcomes(correct=[0, 1], score=[0, 0], cost=[5, 5]),
            "small": TierOutcomes(correct=[0, 1], score=[0, 0], cost=[2, 3]),
        }
    )
    oracle = evaluate_oracle(data)
    assert (oracle.accuracy, oracle.cost_per_query) == (0.5, 2.5)
    assert dict(oracle.answered) == {"big": 0.0, "small": 1.0}


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="non-last"):
        CascadePolicy(("edge", "cloud"), {"edge": 0.5, "cloud": 0.5})
    with pytest.raises(ValueError, match="non-last"):
        CascadePolicy(("edge", "cloud"), {})
    with pytest.raises(ValueError, match="each once"):
        CascadePolicy(("edge", "edge"), {"edge": 0.5})
    with pytest.raises(ValueError, match="skip_thresholds"):
        CascadePolicy(("edge", "cloud"), {"edge": 0.5}, {"cloud": 0.5})
    with pytest.raises(ValueError, match="finite"):
        CascadePolicy(("edge", "cloud"), {"edge": float("inf")})


def test_evaluation_errors(two_tiers: CascadeData) -> None:
    with pytest.raises(KeyError, match="gpu"):
        evaluate_cascade(two_tiers, CascadePolicy(("edge", "gpu"), {"edge": 0.5}))
    with pytest.raises(ValueError, match="fail_prob"):
        evaluate_cascade(two_tiers, CascadePolicy(("cloud", "edge"), {"cloud": 0.5}, {"cloud": 0.5}))


def test_split_validation() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        TierOutcomes(correct=[1], score=[0.5], cost=[-1.0])
    with pytest.raises(ValueError, match="finite"):
        TierOutcomes(correct=[1], score=[float("nan")], cost=[1.0])
    with pytest.raises(ValueError, match="length"):
        TierOutcomes(correct=[1, 0], score=[0.5], cost=[1.0, 1.0])
    with pytest.raises(ValueError, match="boolean"):
        TierOutcomes(correct=[2], score=[0.5], cost=[1.0])
    with pytest.raises(ValueError, match="different numbers"):
        CascadeData({"a": TierOutcomes([1], [0.5], [1.0]), "b": TierOutcomes([1, 1], [0.5, 0.5], [1.0, 1.0])})


def test_arrays_are_copied_and_read_only() -> None:
    score = np.array([0.5, 0.6])
    tier = TierOutcomes(correct=[True, False], score=score, cost=[1.0, 1.0])
    score[0] = 0.0
    assert tier.score[0] == 0.5
    with pytest.raises(ValueError):
        tier.score[0] = 1.0


def test_npz_round_trip(tmp_path, two_tiers: CascadeData) -> None:
    path = tmp_path / "split.npz"
    two_tiers.save_npz(path)
    back = CascadeData.load_npz(path)
    assert list(back.tiers) == ["edge", "cloud"]
    for name, tier in two_tiers.tiers.items():
        for key in ("correct", "score", "cost"):
            np.testing.assert_array_equal(getattr(back.tiers[name], key), getattr(tier, key))
    assert back.tiers["cloud"].fail_prob is None
    np.testing.assert_array_equal(back.tiers["edge"].fail_prob, two_tiers.tiers["edge"].fail_prob)


def test_policy_section_round_trips_through_json() -> None:
    policy = CascadePolicy(("edge", "cloud"), {"edge": 0.82}, {"edge": 0.9})
    section = policy.to_policy_section(2e-5)
    assert section == {
        "cascade": {"order": ["edge", "cloud"], "thresholds": {"edge": 0.82}, "budget_per_query": 2e-5,
                    "skip_thresholds": {"edge": 0.9}}
    }
    assert CascadePolicy.from_policy_section(json.loads(json.dumps(section))) == policy
    plain = CascadePolicy(("cloud",))
    assert plain.to_policy_section(1.0) == {"cascade": {"order": ["cloud"], "thresholds": {}, "budget_per_query": 1.0}}
