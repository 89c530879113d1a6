"""Convert FrugalGPT's HEADLINES CSVs (shared/data/headlines/) into this workload's JSON lines.

    python data/workloads/headlines/convert.py ../shared/data/headlines data/workloads/headlines

Each CSV row (``query`` = ``"Q: <headline>\\nA:"``, ``answer``, ``id``) becomes
``{"id", "prompt": <headline>, "reference": <answer>, "choices": LABELS}``; the label-choice
judge follows from ``choices``. Row order and ids are kept.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

LABELS = ["up", "down", "neutral", "none"]  # the order the 8-shot instruction names them in


def convert(source: Path, out: Path, split: str) -> int:
    rows = []
    with (source / f"{split}.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            query, label = row["query"], row["answer"].strip()
            if not (query.startswith("Q: ") and query.endswith("\nA:")) or label not in LABELS:
                raise ValueError(f"{split}.csv id {row['id']}: unexpected row {row}")
            rows.append({"id": row["id"], "prompt": query[3:-3], "reference": label, "choices": LABELS})
    (out / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


if __name__ == "__main__":
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    for split in ("train", "dev"):
        print(split, convert(source, out, split))
