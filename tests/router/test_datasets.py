"""HEADLINES loading and FrugalGPT-style answer matching."""

from __future__ import annotations

from collections import Counter

import pytest
from tierlm.router.datasets import LABELS, Example, is_correct, load_headlines, normalize_answer, parse_query


def test_splits_load_with_known_sizes_and_labels() -> None:
    train, dev = load_headlines("train"), load_headlines("dev")
    assert (len(train), len(dev)) == (5000, 2500)
    assert set(Counter(e.label for e in train)) == set(LABELS)
    assert len({e.id for e in train}) == 5000
    first = dev[0]
    assert first.query == f"Q: {first.headline}\nA:"


def test_malformed_label_names_the_row(tmp_path) -> None:
    (tmp_path / "train.csv").write_text('query,answer,id\n"Q: gold up\nA:",sideways,7\n')
    with pytest.raises(ValueError, match="row id 7"):
        load_headlines("train", root=tmp_path)


def test_parse_query_round_trips_and_rejects_other_shapes() -> None:
    assert parse_query(Example("1", "gold adds 1%", "up").query) == "gold adds 1%"
    with pytest.raises(ValueError):
        parse_query("gold adds 1%")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (" up", "up"),
        ("Down.", "down"),
        ("  NEUTRAL\n\nQ: gold steady\nA: neutral", "neutral"),
        ("the none", "none"),
        ("up, sharply", "up sharply"),
        ("", ""),
    ],
)
def test_normalize_answer(answer: str, expected: str) -> None:
    assert normalize_answer(answer) == expected


def test_is_correct_is_exact_match_after_normalisation() -> None:
    assert is_correct(" Up.", "up")
    assert not is_correct("up sharply", "up")
    assert not is_correct("down", "up")
