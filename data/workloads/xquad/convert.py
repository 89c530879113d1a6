"""Convert XQuAD's English file (google-deepmind/xquad, `xquad.en.json`) into this workload's JSON lines.

    python data/workloads/xquad/convert.py <xquad>/xquad.en.json data/workloads/xquad

Extractive QA judged by SQuAD's token F1. To keep prompts short enough for small models on a
CPU, each question's context is the sentence holding its answer and the sentence before it
(not the whole paragraph). Articles alternate between the splits (even positions train, odd
test), so no paragraph appears in both. Each row: ``{"id", "prompt": "Context: ...\\nQuestion:
...", "reference": <answer>, "judge": "token_f1", "max_tokens": 16}``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def answer_context(paragraph: str, answer_start: int) -> str:
    """The sentence holding ``answer_start`` and the one before it."""
    starts = [0] + [m.end() for m in _SENTENCE_END.finditer(paragraph)]
    index = max(i for i, start in enumerate(starts) if start <= answer_start)
    begin = starts[max(index - 1, 0)]
    end = starts[index + 1] if index + 1 < len(starts) else len(paragraph)
    return paragraph[begin:end].strip()


def main(source: Path, out: Path) -> None:
    articles = json.loads(source.read_text(encoding="utf-8"))["data"]
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for position, article in enumerate(articles):
        split = "train" if position % 2 == 0 else "test"
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                first = qa["answers"][0]
                context = answer_context(paragraph["context"], first["answer_start"])
                splits[split].append({
                    "id": qa["id"],
                    "prompt": f"Context: {context}\nQuestion: {qa['question'].strip()}",
                    "reference": list(dict.fromkeys(a["text"].strip() for a in qa["answers"])),
                    "judge": "token_f1",
                    "max_tokens": 16,
                    "metadata": {"article": article["title"]},
                })
    for name, rows in splits.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(name, len(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
