"""Sliding-window perplexity with a fixed context (the standard HF strided method).

The text is cut into windows of ``context`` tokens whose starts are ``stride`` apart; each
window scores only the tokens no earlier window scored, so every token is scored exactly
once and, after the first window, with at least ``context - stride`` tokens of history.

The model is anything with the causal-LM call signature: ``model(input_ids)`` on a
``[1, T]`` LongTensor returning an object with ``.logits`` (or the logits tensor itself)
of shape ``[1, T, vocab]``. An HF model, a compressed artifact's module or a test double
all work unchanged.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch


class Window(NamedTuple):
    """Tokens ``[begin, end)`` are the model's input; targets ``[score_from, end)`` are scored."""

    begin: int
    end: int
    score_from: int


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of one text under one model; ``nll`` is the mean per scored token, in nats."""

    ppl: float
    nll: float
    tokens: int
    windows: int
    context: int
    stride: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return asdict(self)

    def summary(self) -> str:
        """A one-line human-readable result."""
        return (
            f"ppl {self.ppl:.3f}  nll {self.nll:.4f}  tokens {self.tokens}  windows {self.windows}  "
            f"context {self.context}  stride {self.stride}  {self.seconds:.1f} s"
        )


def windows(n_tokens: int, context: int, stride: int, first_scored: int = 1) -> Iterator[Window]:
    """The strided windows over ``n_tokens`` tokens.

    ``first_scored`` is how many tokens at a window's start cannot be predicted inside it:
    1 when the window is the model's whole input, 0 when each window gets an unscored
    prefix (a BOS) that predicts its first token. With ``stride <= context - first_scored``
    every token from ``first_scored`` on is scored exactly once; with ``stride == context``
    the windows are disjoint chunks and each chunk's unpredictable first token(s) are
    skipped, which is plain non-overlapping chunked evaluation.
    """
    if context < 1 or stride < 1:
        raise ValueError("context and stride must be positive")
    if stride > context:
        raise ValueError(f"stride {stride} > context {context} would leave tokens unscored")
    scored_until = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        score_from = max(scored_until, begin + first_scored)
        if end > score_from:
            yield Window(begin, end, score_from)
        scored_until = max(scored_until, end)
        if end == n_tokens:
            return


def perplexity(
    model: Callable[..., Any],
    input_ids: Sequence[int] | torch.Tensor,
    *,
    context: int = 512,
    stride: int = 256,
    bos_id: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """Perplexity of ``input_ids`` (one token sequence) under ``model``.

    With ``bos_id`` every window is prefixed by that token (not scored), as models such
    as Gemma expect a BOS at the start of their input; the text then gets ``context - 1``
    tokens per window and its first token is scored too. ``progress(done, total)`` is
    called after each window with the number of scored tokens.
    """
    import torch

    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
    prefix = [] if bos_id is None else [bos_id]
    span = context - len(prefix)
    if stride > span:
        raise ValueError(f"stride {stride} > {span} text tokens per window would leave tokens unscored")
    plan = list(windows(ids.numel(), span, stride, first_scored=0 if prefix else 1))
    total = sum(w.end - w.score_from for w in plan)
    if total == 0:
        raise ValueError("need at least one token to score (two without a BOS prefix)")
    keep_arg = _logits_to_keep_supported(model)
    prefix_ids = torch.tensor(prefix, dtype=torch.long)

    nll_sum = 0.0
    done = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for window in plan:
            chunk = torch.cat([prefix_ids, ids[window.begin : window.end]]).unsqueeze(0)
            n_scored = window.end - window.score_from
            # Logits at position p predict token p + 1, so the scored targets (a suffix of
            # the window) need the n_scored logits before the last position.
            if keep_arg:
                logits = _logits(model(chunk, logits_to_keep=n_scored + 1))[0, :-1]
            else:
                logits = _logits(model(chunk))[0, -n_scored - 1 : -1]
            targets = ids[window.score_from : window.end]
            nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            nll_sum += nll.double().item()
            done += n_scored
            if progress is not None:
                progress(done, total)
    mean = nll_sum / total
    return PerplexityResult(
        ppl=math.exp(mean),
        nll=mean,
        tokens=total,
        windows=len(plan),
        context=context,
        stride=stride,
        seconds=time.perf_counter() - start,
    )


def read_text(path: str | Path) -> str:
    """A text file, or a folder's ``*.txt`` files in sorted name order joined by blank lines."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"{path}: no .txt files")
        return "\n\n".join(f.read_text(encoding="utf-8").strip("\n") for f in files) + "\n"
    return path.read_text(encoding="utf-8")


def encode(tokenizer: Any, text: str, max_tokens: int | None = None) -> tuple[list[int], int | None]:
    """Token ids of ``text`` without special tokens, and the BOS id to put before each window.

    The BOS id is returned only when the tokenizer itself starts sequences with one (Gemma
    does, SmolLM2 does not), so each model is scored the way it is normally fed.
    """
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if max_tokens is not None:
        ids = ids[:max_tokens]
    probe = tokenizer("a").input_ids
    bos = getattr(tokenizer, "bos_token_id", None)
    return ids, bos if bos is not None and probe[:1] == [bos] else None


def evaluate(
    model: Callable[..., Any],
    tokenizer: Any,
    text: str,
    *,
    context: int = 512,
    stride: int = 256,
    max_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """Perplexity of ``text`` under a loaded ``model`` + ``tokenizer`` pair."""
    ids, bos = encode(tokenizer, text, max_tokens)
    return perplexity(model, ids, context=context, stride=stride, bos_id=bos, progress=progress)


def _logits(output: Any) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def _logits_to_keep_supported(model: Callable[..., Any]) -> bool:
    # HF causal LMs can skip the output projection for unscored positions; with a 262k
    # vocabulary (Gemma 3) that projection is a large share of the work.
    forward = getattr(model, "forward", model)
    try:
        return "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False
