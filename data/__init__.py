"""Data files tierlm ships (installed as the package `tierlm.data`): the workloads.

``workloads_dir() / "headlines" / "train.jsonl"`` is the same file in a source checkout
(data/workloads/) and in an installed wheel.
"""

from __future__ import annotations

from pathlib import Path


def workloads_dir() -> Path:
    """The folder holding one folder per shipped workload (headlines, snips, xquad)."""
    return Path(__file__).resolve().parent / "workloads"
