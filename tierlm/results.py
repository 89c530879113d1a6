"""The one JSON shape every bench and evaluation writes (rendered by bench/report.py into docs/benchmarks.md), plus the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

# bench/results/ of a source checkout; `write_results(..., folder=...)` writes elsewhere.
RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def machine() -> str:
    """'<cpu model>, <cores this process may use> cores', plus the GPU's name when torch sees one."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    described = f"{model}, {len(os.sched_getaffinity(0))} cores"
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            described += f" | {torch.cuda.get_device_name()}"
    return described


def write_results(bench: str, rows: list[dict], folder: Path = RESULTS, **extra: object) -> Path:
    """Write `<folder>/<bench>.json` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{bench}.json"
    document = {
        "bench": bench,
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        **extra,
        "rows": rows,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
