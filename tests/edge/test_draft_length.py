"""The drafter's choice of k: adapted to acceptance and round costs, or held where told."""

from __future__ import annotations

import random

import pytest

from tierlm.edge.speculative.adaptive import DraftLength, expected_tokens


def test_expected_tokens_follows_the_geometric_model() -> None:
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


def test_k_grows_with_good_cheap_drafts_and_shrinks_with_poor_ones() -> None:
    length = DraftLength(4, 8)
    for _ in range(10):  # every draft accepted; a draft step costs a tenth of a verify call
        length.observe(drafted=length.k, accepted=length.k, draft_s=0.001 * length.k, verify_s=0.01)
    assert length.k == 8
    for _ in range(10):  # every draft rejected at once
        length.observe(drafted=length.k, accepted=0, draft_s=0.001 * length.k, verify_s=0.01)
    assert length.k == 1


def test_k_is_held_when_not_adaptive() -> None:
    length = DraftLength(3, 3, adaptive=False)
    for accepted in (0, 3, 0, 3):
        length.observe(drafted=3, accepted=accepted, draft_s=0.003, verify_s=0.01)
        assert length.k == 3
    with pytest.raises(ValueError, match="1 <= k <= max_k"):
        DraftLength(0, 3)


def test_k_stays_short_where_verifying_costs_grow_with_every_draft() -> None:
    # A cheap draft (10 ms a step) and a CPU verifier (20 ms plus 60 ms per draft), drafts
    # accepted at 0.8 per token: one draft per round gives 20 tokens/s, two 15, eight 6. A verify
    # cost taken as flat makes long rounds look cheap whenever it was last measured on a short
    # one, and k swings between 2 and 8.
    rng = random.Random(0)
    length = DraftLength(4, 10)
    ks = []
    for _ in range(60):
        k = length.k
        accepted = next((i for i in range(k) if rng.random() >= 0.8), k)
        length.observe(drafted=k, accepted=accepted, draft_s=0.01 * k, verify_s=0.02 + 0.06 * k)
        ks.append(length.k)
    assert max(ks[-20:]) <= 2 and ks[-20:].count(1) >= 18
