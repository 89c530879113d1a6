"""Render every bench/results/*.json as a markdown table (for the README).

    python bench/report.py [NAME ...]     # default: every result file
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def table(document: dict) -> str:
    rows = document["rows"]
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns and not isinstance(row[key], (dict, list))]
    lines = [
        f"**{document['bench']}** — {document['machine']}, {document['date']}  ",
        f"`{document['command']}`",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    names = sys.argv[1:] or sorted(p.stem for p in RESULTS.glob("*.json"))
    print("\n\n".join(table(json.loads((RESULTS / f"{name}.json").read_text())) for name in names))


if __name__ == "__main__":
    main()
