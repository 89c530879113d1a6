"""A drafter's frequent vocabulary: ranked by count in the given texts, then the tokenizer's own
order, stop tokens always in."""

from __future__ import annotations

import pytest

from tierlm.edge.speculative.vocabulary import frequent_tokens


class WordTokenizer:
    """Whitespace words as token ids (their given numbers), the call shape of a HF tokenizer."""

    def __init__(self, ids: dict[str, int]) -> None:
        self.ids = ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        assert not add_special_tokens  # counts must not be skewed by a BOS per text
        return {"input_ids": [self.ids[word] for word in text.split()]}


TOKENIZER = WordTokenizer({"the": 5, "cat": 9, "sat": 2, "mat": 7, "on": 11})


def test_the_most_frequent_tokens_are_kept_ties_by_lower_id():
    texts = ["the cat sat on the mat", "the cat sat", "on mat"]  # the 3, cat 2, sat 2, on 2, mat 2
    assert frequent_tokens(TOKENIZER, texts, size=3).tolist() == [2, 5, 7]  # "the", then ids 2 and 7 of the four tied
    assert frequent_tokens(TOKENIZER, texts, size=3, always=[0, 5]).tolist() == [0, 2, 5, 7]
    assert frequent_tokens(TOKENIZER, texts, size=100).tolist() == [2, 5, 7, 9, 11]  # only what was seen


def test_room_the_texts_leave_goes_to_the_lowest_other_ids():
    texts = ["cat cat on"]  # cat 2, on 1
    assert frequent_tokens(TOKENIZER, texts, size=5, vocab_size=12).tolist() == [0, 1, 2, 9, 11]
    assert frequent_tokens(TOKENIZER, texts, size=1, vocab_size=12).tolist() == [9]  # the texts' ranking first
    assert frequent_tokens(TOKENIZER, texts, size=40, vocab_size=12).tolist() == list(range(12))  # all there is


@pytest.mark.parametrize("texts, size, message", [
    (["the cat"], 0, "at least one token"),
    (["", ""], 4, "texts are empty"),
])
def test_a_vocabulary_that_cannot_be_built_is_refused(texts, size, message):
    with pytest.raises(ValueError, match=message):
        frequent_tokens(TOKENIZER, texts, size=size)
