"""Labelled query sets for routing experiments, and how answers are scored against labels.

HEADLINES (gold-news headline direction, from FrugalGPT) ships in the repository under
``data/headlines/``: ``train.csv`` (5,000 rows) and ``dev.csv`` (2,500 rows), each row an ``id``,
a ``query`` of the form ``"Q: <headline>\\nA:"`` and an ``answer`` label.
"""

from __future__ import annotations

import csv
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

LABELS: tuple[str, ...] = ("up", "down", "neutral", "none")
"""The HEADLINES label set, in the order the fixed 8-shot prompt's instruction names them."""

Split = Literal["train", "dev"]

_QUERY_PREFIX = "Q: "
_QUERY_SUFFIX = "\nA:"
_DATA_ENV = "TIERLM_HEADLINES_DIR"


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled HEADLINES row."""

    id: str
    headline: str
    label: str

    @property
    def query(self) -> str:
        """The row as a prompt tail, exactly as the CSV's ``query`` column holds it."""
        return f"{_QUERY_PREFIX}{self.headline}{_QUERY_SUFFIX}"


def headlines_dir() -> Path:
    """The HEADLINES folder: ``$TIERLM_HEADLINES_DIR`` if set, else the repository's ``data/headlines``."""
    override = os.environ.get(_DATA_ENV)
    if override:
        return Path(override)
    # router/ sits at the repository root, beside data/.
    return Path(__file__).resolve().parent.parent / "data" / "headlines"


def parse_query(query: str) -> str:
    """The headline inside a ``"Q: <headline>\\nA:"`` prompt tail.

    Raises:
        ValueError: if ``query`` does not have that shape.
    """
    if not (query.startswith(_QUERY_PREFIX) and query.endswith(_QUERY_SUFFIX)):
        raise ValueError(f"not a 'Q: ...\\nA:' query: {query!r}")
    return query[len(_QUERY_PREFIX) : -len(_QUERY_SUFFIX)]


def load_headlines(split: Split, root: Path | None = None) -> list[Example]:
    """Load one HEADLINES split in file order.

    Raises:
        ValueError: on a row whose label is not in :data:`LABELS` or whose query is malformed,
            naming the file and the row id.
    """
    path = (root or headlines_dir()) / f"{split}.csv"
    examples = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            label = row["answer"].strip()
            if label not in LABELS:
                raise ValueError(f"{path}: row id {row['id']}: label {label!r} not in {LABELS}")
            try:
                headline = parse_query(row["query"])
            except ValueError as err:
                raise ValueError(f"{path}: row id {row['id']}: {err}") from err
            examples.append(Example(id=row["id"], headline=headline, label=label))
    return examples


def load_fixed_prompt(root: Path | None = None) -> str:
    """FrugalGPT's 8-shot HEADLINES prefix (instruction, eight demonstrations, trailing blank line)."""
    return ((root or headlines_dir()) / "prompt_8shot.txt").read_text(encoding="utf-8")


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Normalize an answer the way FrugalGPT's exact-match metric does.

    Only the first line counts: a completion of the few-shot format runs on into the next
    ``"\\n\\nQ: ..."`` block unless generation stopped at the newline. Then, as FrugalGPT's
    ``normalize_answer``: lower-case, drop ASCII punctuation, drop the articles a/an/the,
    collapse whitespace.
    """
    first_line = text.strip().split("\n", 1)[0] if text.strip() else ""
    lowered = first_line.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", lowered).split())


def is_correct(answer: str, label: str) -> bool:
    """Exact match after :func:`normalize_answer` on both sides (FrugalGPT's ``em``)."""
    return normalize_answer(answer) == normalize_answer(label)
