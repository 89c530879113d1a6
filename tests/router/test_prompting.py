"""Prompt strategies: fixed, balanced and retrieved demonstrations, and contextual calibration."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError
from tierlm.config import Calibration, PromptStrategy
from tierlm.router.prompting import PromptBuilder, calibrate, parse_prompt_file, render_prompt

from tests.support.workloads import HEADLINES, LABELS, row

EIGHT_SHOT = HEADLINES / "prompt_8shot.txt"
INSTRUCTION = "Please determine the price direction (up, down, neutral, or none) in the following news headlines."


def headlines_strategy(**fields) -> PromptStrategy:
    """The HEADLINES tiers' strategy: FrugalGPT's instruction and the four labels."""
    return PromptStrategy(**{"instruction": INSTRUCTION, "labels": LABELS, **fields})


def labelled_pool(per_label: int = 5):
    return [
        row(f"{label}-{i}", f"gold headline {label} {i}", label)
        for label in LABELS
        for i in range(per_label)
    ]


def test_fixed_eight_shot_reproduces_the_prompt_file() -> None:
    builder = PromptBuilder(headlines_strategy(selection="fixed", k=8, fixed_prompt=EIGHT_SHOT))
    prompt = builder.build_prompt("gold climbs to record")
    assert prompt == EIGHT_SHOT.read_text() + "Q: gold climbs to record\nA:"


def test_fixed_k_takes_the_first_demonstrations() -> None:
    _, demos = parse_prompt_file(EIGHT_SHOT.read_text(), "Q: {query}\nA:")
    builder = PromptBuilder(headlines_strategy(selection="fixed", k=2, fixed_prompt=EIGHT_SHOT))
    assert builder.demonstrations("q") == demos[:2]
    assert builder.build_prompt("q").count("\nA: ") == 2
    with pytest.raises(ValueError, match="only 8"):
        PromptBuilder(headlines_strategy(selection="fixed", k=9, fixed_prompt=EIGHT_SHOT))


def test_fixed_without_a_file_takes_the_pools_first_rows() -> None:
    pool = labelled_pool(2)
    assert PromptBuilder(PromptStrategy(selection="fixed", k=3), pool).demonstrations("q") == pool[:3]
    with pytest.raises(ValueError, match="pool holds 8"):
        PromptBuilder(PromptStrategy(selection="fixed", k=9), pool)


def test_any_template_renders_and_parses_back() -> None:
    strategy = PromptStrategy(selection="fixed", k=2, instruction="Answer.", template="Question: {query}\nAnswer:")
    pool = [row("1", "two plus two?", "4", None), row("2", "capital of France?", "Paris", None)]
    prompt = PromptBuilder(strategy, pool).build_prompt("three plus one?")
    assert prompt == "Answer.\n\nQuestion: two plus two?\nAnswer: 4\n\nQuestion: capital of France?\nAnswer: Paris\n\nQuestion: three plus one?\nAnswer:"
    instruction, demos = parse_prompt_file(prompt.rsplit("\n\n", 1)[0], strategy.template)
    assert instruction == "Answer." and [(d.query, d.label) for d in demos] == [("two plus two?", "4"), ("capital of France?", "Paris")]


def test_zero_shot_is_instruction_and_query() -> None:
    builder = PromptBuilder(PromptStrategy(selection="fixed", k=0, instruction="Classify."))
    assert builder.build_prompt("gold up") == "Classify.\n\nQ: gold up\nA:"


@pytest.mark.parametrize(("k", "counts"), [(8, [2, 2, 2, 2]), (6, [2, 2, 1, 1]), (4, [1, 1, 1, 1])])
def test_balanced_selection_is_balanced(k: int, counts: list[int]) -> None:
    builder = PromptBuilder(headlines_strategy(selection="balanced", k=k, seed=3), labelled_pool())
    demos = builder.demonstrations("an unrelated query")
    per_label = Counter(d.label for d in demos)
    assert [per_label[label] for label in LABELS] == counts
    assert len({d.id for d in demos}) == k


def test_balanced_is_seeded_and_the_same_for_every_query() -> None:
    pool = labelled_pool(20)
    a = PromptBuilder(headlines_strategy(selection="balanced", k=8, seed=1), pool)
    b = PromptBuilder(headlines_strategy(selection="balanced", k=8, seed=1), pool)
    c = PromptBuilder(headlines_strategy(selection="balanced", k=8, seed=2), pool)
    assert a.demonstrations("x") == b.demonstrations("x") == a.demonstrations("y")
    assert a.demonstrations("x") != c.demonstrations("x")


def test_balanced_never_shows_the_query_its_own_row() -> None:
    builder = PromptBuilder(headlines_strategy(selection="balanced", k=8), labelled_pool())
    chosen = builder.demonstrations("unrelated")[0]
    demos = builder.demonstrations(chosen.query.upper())  # case and spacing do not hide it
    assert chosen not in demos
    assert Counter(d.label for d in demos)[chosen.label] == 2


def test_balanced_needs_enough_rows_per_label() -> None:
    with pytest.raises(ValueError, match="labelled"):
        PromptBuilder(headlines_strategy(selection="balanced", k=8), labelled_pool(per_label=2))


def retrieval_setup():
    pool = labelled_pool(3)
    angles = np.radians(np.arange(len(pool)) * 7.0)  # pool row i sits at 7*i degrees
    return pool, np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def test_retrieval_returns_the_nearest_most_similar_last() -> None:
    pool, emb = retrieval_setup()
    builder = PromptBuilder(PromptStrategy(selection="retrieved", k=3), pool, pool_embeddings=emb)
    q = np.array([math.cos(math.radians(36)), math.sin(math.radians(36))], dtype=np.float32)
    demos = builder.demonstrations("a new headline", query_embedding=q)
    # Rows at 35, 42 and 28 degrees, in increasing similarity.
    assert demos == [pool[4], pool[6], pool[5]]
    prompt = builder.build_prompt("a new headline", query_embedding=q)
    assert prompt.endswith(f"Q: {pool[5].query}\nA: {pool[5].label}\n\nQ: a new headline\nA:")


def test_retrieval_excludes_the_query_itself() -> None:
    pool, emb = retrieval_setup()
    builder = PromptBuilder(PromptStrategy(selection="retrieved", k=3), pool, pool_embeddings=emb)
    # The query is pool row 0 (also at 0 degrees); the pool's next rows are 7, 14, 21 degrees off.
    demos = builder.demonstrations(pool[0].query, query_embedding=emb[0])
    assert demos == [pool[3], pool[2], pool[1]]


def test_retrieval_with_minilm_finds_the_paraphrase(minilm) -> None:
    pool = [
        row("1", "gold prices climb 2% as dollar weakens", "up"),
        row("2", "silver futures slip on profit taking", "down"),
        row("3", "central bank holds rates steady", "none"),
        row("4", "gold steady ahead of fed meeting", "neutral"),
    ]
    builder = PromptBuilder(PromptStrategy(selection="retrieved", k=2), pool, encoder=minilm)
    demos = builder.demonstrations("gold rises two percent on weaker dollar")
    assert demos[-1] == pool[0]
    assert pool[0] not in builder.demonstrations(pool[0].query)


def test_strategy_validation_names_the_field() -> None:
    with pytest.raises(ValidationError, match="k"):
        PromptStrategy(k=-1)
    with pytest.raises(ValidationError, match="selction"):
        PromptStrategy(selction="fixed")
    with pytest.raises(ValidationError, match="labels"):
        PromptStrategy(selection="balanced", labels=())
    with pytest.raises(ValidationError, match="query"):
        PromptStrategy(template="Q: no placeholder")
    with pytest.raises(ValueError, match="encoder"):
        PromptBuilder(PromptStrategy(selection="retrieved", k=1), labelled_pool())


def test_label_continuations_follow_the_demo_format() -> None:
    strategy = headlines_strategy(instruction="")
    assert strategy.label_continuations == (" up", " down", " neutral", " none")
    assert render_prompt(strategy, [row("1", "h", "up")], "q") == "Q: h\nA: up\n\nQ: q\nA:"


def test_content_free_prompts_keep_the_demonstrations() -> None:
    strategy = headlines_strategy(selection="fixed", k=2, fixed_prompt=EIGHT_SHOT, calibration=Calibration(content_free=("N/A", "")))
    builder = PromptBuilder(strategy)
    real, na, empty = builder.build_prompt("gold up"), *builder.content_free_prompts("gold up")
    assert na == real.replace("Q: gold up\nA:", "Q: N/A\nA:")
    assert empty.endswith("Q: \nA:")
    with pytest.raises(ValueError, match="no calibration"):
        PromptBuilder(headlines_strategy(k=2, fixed_prompt=EIGHT_SHOT)).content_free_prompts("q")


def test_calibration_divides_out_the_content_free_bias() -> None:
    log = math.log
    query = {"up": log(0.5), "down": log(0.3), "neutral": log(0.1), "none": log(0.1)}
    # A model that says 'up' 70% of the time on content-free input: 'up' loses its lead.
    biased = [{"up": log(0.7), "down": log(0.1), "neutral": log(0.1), "none": log(0.1)}]
    out = calibrate(query, biased)
    assert math.fsum(math.exp(v) for v in out.values()) == pytest.approx(1.0)
    assert max(out, key=out.get) == "down"
    # q ∝ p / p_cf: up 0.5/0.7, down 0.3/0.1, neutral 1, none 1.
    raw = {"up": 0.5 / 0.7, "down": 3.0, "neutral": 1.0, "none": 1.0}
    total = sum(raw.values())
    assert {k: math.exp(v) for k, v in out.items()} == pytest.approx({k: v / total for k, v in raw.items()})


def test_calibration_with_uniform_content_free_only_renormalises() -> None:
    query = {"up": -1.0, "down": -2.0, "none": -3.0}
    uniform = [{"up": -5.0, "down": -5.0, "none": -5.0}, {"up": -1.0, "down": -1.0, "none": -1.0}]
    out = calibrate(query, uniform)
    z = math.log(sum(math.exp(v) for v in query.values()))
    assert out == pytest.approx({k: v - z for k, v in query.items()})
