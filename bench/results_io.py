"""The one JSON shape every bench writes (DESIGN.md §7), plus the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """'<cpu model>, <n> cores' (or the GPU's name when torch sees one)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    described = f"{model}, {os.cpu_count()} cores"
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            described += f" | {torch.cuda.get_device_name()}"
    return described


def write_results(bench: str, rows: list[dict], **extra: object) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{bench}.json"
    document = {
        "bench": bench,
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **extra,
        "rows": rows,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
