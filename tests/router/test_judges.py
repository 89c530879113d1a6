"""Judges: whether an answer is correct for a row's references."""

from __future__ import annotations

import pytest

from tierlm.router.judges import JUDGES
from tierlm.router.judges.text import normalize
from tierlm.router.judges.token_f1 import token_f1


@pytest.mark.parametrize(
    ("answer", "expected"),
    [(" up", "up"), ("Down.", "down"), ("the none", "none"), ("up, sharply", "up sharply"), ("", "")],
)
def test_normalize(answer: str, expected: str) -> None:
    assert normalize(answer) == expected


@pytest.mark.parametrize(
    ("judge", "options", "answer", "references", "correct"),
    [
        ("choice", {}, " Up", ["up"], True),
        ("choice", {}, "down", ["up"], False),
        ("exact", {}, " 42 ", ["42"], True),
        ("exact", {}, "42.", ["42"], False),
        ("normalized", {}, "  NEUTRAL\n\nQ: gold steady\nA: neutral", ["neutral"], True),
        ("normalized", {}, "up sharply", ["up"], False),
        ("contains", {}, "I think it is Paris, France.", ["paris"], True),
        ("contains", {}, "Parisian", ["paris"], False),
        ("numeric", {"tolerance": 0.01}, "about 1,001 people", ["1000"], True),
        ("numeric", {}, "1001", ["1000"], False),
        ("numeric", {}, "none", ["3"], False),
        ("regex", {"ignore_case": True}, "ABC-123\nmore", [r"[a-z]+-\d+"], True),
        ("regex", {}, "abc-123 tail", [r"[a-z]+-\d+"], False),
        ("token_f1", {}, "the Saxon Garden", ["Ogród Saski", "Saxon Garden"], True),
        ("token_f1", {}, "the rose garden party", ["Saxon Garden"], False),  # F1 0.4
        ("token_f1", {"threshold": 0.4}, "the rose garden party", ["Saxon Garden"], True),
    ],
)
def test_judges(judge: str, options: dict, answer: str, references: list[str], correct: bool) -> None:
    assert JUDGES.build(judge, **options).correct(answer, references) is correct


def test_token_f1_matches_squads_definition() -> None:
    assert token_f1("Denver Broncos", "Denver Broncos") == 1.0
    assert token_f1("the Denver Broncos team", "Denver Broncos") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_bad_judge_options_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        JUDGES.build("token_f1", threshold=0)
    with pytest.raises(ValueError, match="unknown judge"):
        JUDGES.build("vibes")
