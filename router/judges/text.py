"""Answer normalisation shared by the text judges (FrugalGPT's and SQuAD's ``normalize_answer``)."""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def first_line(text: str) -> str:
    """The answer's first non-empty line: a completion of a few-shot format runs on into the
    next ``"\\n\\nQ: ..."`` block unless generation stopped at the newline."""
    stripped = text.strip()
    return stripped.split("\n", 1)[0] if stripped else ""


def normalize(text: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    lowered = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", lowered).split())
