"""Workload rows for tests: the shipped HEADLINES workload and small labelled pools."""

from __future__ import annotations


from tierlm.data import workloads_dir
from tierlm.router.workload import Workload, WorkloadRow, load_workload

HEADLINES = workloads_dir() / "headlines"
LABELS = ("up", "down", "neutral", "none")


def headlines(split: str) -> Workload:
    """HEADLINES ``train`` or ``dev``."""
    return load_workload(HEADLINES / f"{split}.jsonl")


def row(id: str, text: str, label: str, choices: tuple[str, ...] | None = LABELS) -> WorkloadRow:
    """A label-choice row (choices: the HEADLINES labels unless given)."""
    return WorkloadRow(id=id, prompt=text, reference=(label,), choices=choices)
