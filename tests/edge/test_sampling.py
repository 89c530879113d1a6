"""Greedy token choice: numpy's argmax on CPU must pick what torch's does, ties included."""

import torch

from tierlm.edge.sampling import greedy_tokens


def test_greedy_tokens_equal_torch_argmax_with_ties_on_the_first():
    logits = torch.randn(8, 1000, generator=torch.Generator().manual_seed(0))
    logits[3, [17, 400, 999]] = 50.0  # a three-way tie: the first index wins, as in torch
    logits[5] = 0.0  # a row of equal values
    assert greedy_tokens(logits) == torch.argmax(logits, dim=-1).tolist()
    assert greedy_tokens(logits)[3] == 17 and greedy_tokens(logits)[5] == 0
    assert greedy_tokens(logits[2]) == [int(torch.argmax(logits[2]))]  # one row ([V])
    half = logits.to(torch.bfloat16)  # numpy has no bfloat16: torch's argmax
    assert greedy_tokens(half) == torch.argmax(half, dim=-1).tolist()
