"""Sliding-window perplexity: exact values on models whose answer is known."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tierlm.edge import perplexity
from tierlm.edge.perplexity import Window, windows


class Uniform(torch.nn.Module):
    """Predicts every token with equal probability: perplexity is exactly the vocabulary size."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, self.vocab)


class Bigram(torch.nn.Module):
    """Logits depend on the current token only, so context and stride cannot change the result."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        super().__init__()
        self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids]

    def nll(self, ids: torch.Tensor, first_scored: int = 1) -> float:
        """Mean NLL of ids[first_scored:], straight from the table."""
        logp = torch.log_softmax(self.table, dim=-1)
        return float(-logp[ids[:-1], ids[1:]][first_scored - 1 :].double().mean())


def _ids(n: int, vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(vocab, (n,), generator=torch.Generator().manual_seed(seed))


@given(
    n=st.integers(1, 300),
    context=st.integers(1, 64),
    stride_frac=st.floats(0.01, 1.0),
    first_scored=st.sampled_from([0, 1]),
)
def test_every_token_is_scored_at_most_once(n: int, context: int, stride_frac: float, first_scored: int) -> None:
    stride = max(1, round(context * stride_frac))
    scored: list[int] = []
    for w in windows(n, context, stride, first_scored):
        assert 0 <= w.begin <= w.score_from - first_scored < w.end - first_scored
        assert w.end <= n and w.end - w.begin <= context
        scored.extend(range(w.score_from, w.end))
    expected = set(range(first_scored, n))
    if first_scored and stride == context:
        # Disjoint chunks: a chunk's first token has nothing before it to predict it from.
        expected -= set(range(0, n, context))
    assert scored == sorted(expected)


def test_windows_match_the_hf_strided_recipe() -> None:
    assert list(windows(10, 4, 2)) == [Window(0, 4, 1), Window(2, 6, 4), Window(4, 8, 6), Window(6, 10, 8)]
    assert list(windows(10, 4, 4)) == [Window(0, 4, 1), Window(4, 8, 5), Window(8, 10, 9)]
    assert list(windows(10, 4, 4, first_scored=0)) == [Window(0, 4, 0), Window(4, 8, 4), Window(8, 10, 8)]
    with pytest.raises(ValueError):
        list(windows(10, 4, 5))


@pytest.mark.parametrize("bos", [None, 7])
@pytest.mark.parametrize(("context", "stride"), [(16, 16), (16, 5), (64, 64)])
def test_uniform_model_perplexity_is_the_vocabulary_size(bos: int | None, context: int, stride: int) -> None:
    vocab = 50
    if bos is not None and stride == context:
        stride -= 1  # the BOS takes one position of each window
    result = perplexity.perplexity(Uniform(vocab), _ids(200, vocab), context=context, stride=stride, bos_id=bos)
    assert result.ppl == pytest.approx(vocab, rel=1e-6)
    chunk_starts = len(range(context, 200, context)) if bos is None and stride == context else 0
    assert result.tokens == (200 if bos is not None else 199 - chunk_starts)


@pytest.mark.parametrize(("context", "stride"), [(8, 7), (8, 3), (32, 1), (200, 100)])
def test_bigram_model_is_independent_of_context_and_stride(context: int, stride: int) -> None:
    model, ids = Bigram(30), _ids(150, 30)
    result = perplexity.perplexity(model, ids, context=context, stride=stride)
    assert result.nll == pytest.approx(model.nll(ids), rel=1e-6)
    assert result.ppl == pytest.approx(math.exp(model.nll(ids)), rel=1e-6)


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


def _chunked_reference(model: torch.nn.Module, ids: torch.Tensor, context: int) -> float:
    """Mean NLL of plain non-overlapping chunked evaluation: each chunk is its own input."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for begin in range(0, len(ids), context):
            chunk = ids[begin : begin + context]
            logp = torch.log_softmax(model(chunk[None]).logits[0].double(), dim=-1)
            total -= logp[:-1].gather(1, chunk[1:, None]).sum().item()
            count += len(chunk) - 1
    return total / count


def test_stride_equal_to_context_is_chunked_evaluation() -> None:
    model, ids = _tiny_llama(), _ids(100, 97)
    result = perplexity.perplexity(model, ids, context=20, stride=20)
    assert result.windows == 5 and result.tokens == 95
    assert result.nll == pytest.approx(_chunked_reference(model, ids, 20), rel=1e-6)


def test_overlap_gives_later_tokens_history() -> None:
    """On a real transformer, overlapping windows change the score (they add history)."""
    model, ids = _tiny_llama(), _ids(100, 97)
    chunked = perplexity.perplexity(model, ids, context=20, stride=20)
    strided = perplexity.perplexity(model, ids, context=20, stride=5)
    assert strided.tokens == 99 and strided.nll != pytest.approx(chunked.nll, rel=1e-6)


def test_logits_to_keep_fast_path_matches_full_logits() -> None:
    """HF models get `logits_to_keep`; a plain callable gets full logits; same answer."""
    model, ids = _tiny_llama(), _ids(120, 97)
    fast = perplexity.perplexity(model, ids, context=32, stride=8, bos_id=3)
    slow = perplexity.perplexity(lambda x: model(x), ids, context=32, stride=8, bos_id=3)
    assert fast.nll == pytest.approx(slow.nll, rel=1e-6)


def test_stride_longer_than_the_text_span_is_refused() -> None:
    with pytest.raises(ValueError, match="stride"):
        perplexity.perplexity(Uniform(5), _ids(50, 5), context=16, stride=16, bos_id=0)


def test_read_text_joins_a_folder_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second\n")
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / "skip.md").write_text("not text")
    assert perplexity.read_text(tmp_path) == "first\n\nsecond\n"
    assert perplexity.read_text(tmp_path / "a.txt") == "first\n"


def test_evaluate_on_a_tokenizer_and_model_pair(tiny_folder: Path) -> None:
    from tierlm.edge import catalog

    model, tokenizer = catalog.load_folder(tiny_folder)
    text = "the cat in a hat sat on the mat. " * 20
    result = perplexity.evaluate(model, tokenizer, text, context=64, stride=32, max_tokens=300)
    ids, bos = perplexity.encode(tokenizer, text, max_tokens=300)
    assert len(ids) == 300 and bos is None  # this tokenizer adds no BOS
    assert result.tokens == 299 and math.isfinite(result.ppl) and result.ppl > 1
