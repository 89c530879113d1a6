"""`tierlm demo`: every tier started on this machine and real HEADLINES queries routed end to end.

Steps: prepare the real models (cached), build the compressed edge artifact once (cached),
start the stack the demo policy launches (knn tier, edge node, Ray Serve cloud tier, router),
send dev queries through the SDK three ways (edge only and cloud only with `force_tier`,
then the fitted cascade), print one table and write the cost-accuracy plot. The policy's
scorer and thresholds were fitted on HEADLINES *train* answers (`fit_policy`), never on dev.
Every step says what it does as it starts, and long ones say how far they got (`Narrator`).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from tierlm.config import Policy, load_policy
from tierlm.errors import MissingResource
from tierlm.router.workload import Workload, WorkloadRow

RECIPES = Path("examples/recipes")
CALIB = Path("data/text/python-docs/calib")


class Narrator:
    """Says what the demo is doing: one line per step on stderr, with the seconds since it began.

    Plain lines rather than live bars, so a terminal, `make demo | tee` and a CI log all show
    the same thing while it happens; long steps report each tenth of their work."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._start = time.perf_counter()
        self._tenths: dict[str, int] = {}

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self._start:5.0f} s] {message}", file=self._stream, flush=True)

    def progress(self, what: str, done: int, total: int, unit: str) -> None:
        """Say `what: done/total unit` each time `done` reaches another tenth of `total`."""
        tenth = 10 * done // total if total else 10
        if tenth > self._tenths.get(what, 0):
            self._tenths[what] = tenth
            self(f"{what}: {done}/{total} {unit}")


@dataclass
class ModeResult:
    """What one way of routing (a forced tier, or the cascade) did on the queries."""

    name: str
    correct: int = 0
    failed: int = 0
    costs: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    tiers: Counter = field(default_factory=Counter)
    wall_s: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.costs)

    def row(self) -> dict:
        n = self.answered + self.failed
        p50, p95 = np.percentile(self.latencies_ms, [50, 95]) if self.latencies_ms else (float("nan"),) * 2
        return {
            "name": self.name, "queries": n, "failed": self.failed,
            "accuracy": self.correct / n if n else float("nan"),
            "cost_per_query": float(np.mean(self.costs)) if self.costs else float("nan"),
            "answered": {t: c / n for t, c in self.tiers.most_common()},
            "latency_ms_p50": float(p50), "latency_ms_p95": float(p95), "wall_s": self.wall_s,
        }


def run_cli(*args: str) -> None:
    """A tierlm command in a child process (its progress bars go to this terminal)."""
    subprocess.run([sys.executable, "-m", "tierlm.app.cli", *args], check=True)


def ensure_models(policy: Policy, say: Narrator) -> None:
    """Prepare every registered model the policy's tiers name, and build each compressed model
    a launched tier names that is not there yet (cached for later runs):

    - ``<cache>/artifacts/<model>/demo-<recipe>``: ``<model>`` compressed by
      ``examples/recipes/<recipe>.yaml`` (the edge node's artifact);
    - ``<cache>/vllm/<model>/demo-<recipe>``: that artifact exported as a compressed-tensors
      checkpoint (``tierlm export vllm``), which the cloud tier's vLLM engine serves.
    """
    from tierlm.edge import catalog
    from tierlm.edge.compress import export_artifact_for_vllm

    for tier in policy.tiers:
        if tier.model in catalog.MODELS:
            say(f"{tier.name}: preparing {tier.model} (converted from its GGUF once, then cached)")
            catalog.prepare(tier.model, report=say)
            continue
        if tier.model is None or tier.launch is None or tier.launch.runtime == "knn":
            continue
        folder = Path(tier.model).expanduser()
        if _is_model_folder(folder):
            continue
        if folder.parent.parent.name != "vllm":
            _build_artifact(tier.name, folder, say)
            continue
        artifact = folder.parents[2] / "artifacts" / folder.parent.name / folder.name
        if not _is_model_folder(artifact):
            _build_artifact(tier.name, artifact, say)
        say(f"{tier.name}: exporting {artifact} for vLLM into {folder}")
        export_artifact_for_vllm(artifact, folder)


def _is_model_folder(folder: Path) -> bool:
    return (folder / "tierlm_compression.json").is_file() or (folder / "config.json").is_file()


def _build_artifact(tier: str, folder: Path, say: Narrator) -> None:
    """Compress ``<model>`` by ``examples/recipes/<recipe>.yaml`` into ``.../<model>/demo-<recipe>``."""
    from tierlm.edge import catalog
    from tierlm.edge.compress import build_artifact
    from tierlm.edge.perplexity import read_text
    from tierlm.kernels.recipe import load_recipe

    base = folder.parent.name
    recipe = RECIPES / f"{folder.name.removeprefix('demo-')}.yaml"
    if base not in catalog.MODELS or not recipe.is_file():
        raise MissingResource(f"tier {tier!r}: {folder} is missing and is not <cache>/artifacts/<model>/demo-<recipe> "
                              "or <cache>/vllm/<model>/demo-<recipe> to build")
    say(f"{tier}: building {folder} from {base} by {recipe} (once; minutes)")
    source = catalog.prepare(base, report=say)
    what = f"{tier}: compressing"
    build_artifact(source, load_recipe(recipe), read_text(CALIB), folder,
                   progress=lambda done, total, _: say.progress(what, done, total, "layers"))


async def run_mode(address: str, name: str, workload: Workload, rows: Sequence[WorkloadRow], concurrency: int,
                   say: Narrator, **routing) -> ModeResult:
    """Send every row's query through the SDK (at most `concurrency` in flight); its judge scores the answer."""
    from tierlm.app.loadgen import send_all
    from tierlm.client import AsyncClient, TierlmError

    finished = itertools.count(1)
    started = time.perf_counter()
    async with AsyncClient(address, timeout_s=300.0) as client:
        outcomes = await send_all(
            client, [row.query for row in rows], concurrency=concurrency,
            on_done=lambda: say.progress(name, next(finished), len(rows), "queries"), max_tokens=1, **routing,
        )  # fmt: skip
    result = ModeResult(name, wall_s=time.perf_counter() - started)
    for row, outcome in zip(rows, outcomes):
        if outcome.error is not None:
            if not isinstance(outcome.error, TierlmError):
                raise outcome.error  # a bug, not a routing failure: the demo stops and shows it
            result.failed += 1
            continue
        answer = outcome.completion
        result.latencies_ms.append(outcome.latency_ms)
        result.costs.append(answer.cost)
        result.tiers[answer.tier] += 1
        result.correct += workload.judge_for(row).correct(answer.text, row.reference)
    return result


def fit_policy(policy_path: Path, workload: Path, answers: Path, rows: int, budget_share: float, scorer_dir: Path) -> dict:
    """The router-brain loop on the workload's train split only: collect every tier's answers on
    its first `rows` rows (resumable, cached in `answers`), train the scorer, fit the cascade
    with the most accuracy at a mean cost <= `budget_share` x the dearest single tier's on the
    scorer's out-of-fold scores, and write scorer and cascade into the policy. Returns the fit."""
    run_cli("router", "collect", "--policy", str(policy_path), "--workload", str(workload), "--limit", str(rows),
            "--out", str(answers))
    run_cli("router", "train", "--answers", str(answers), "--out", str(scorer_dir), "--report-split", "none",
            "--policy", str(policy_path))
    scorer = scorer_dir.resolve().relative_to(Path.cwd()) if scorer_dir.resolve().is_relative_to(Path.cwd()) else scorer_dir
    run_cli("router", "fit", "--policy", str(policy_path), "--answers", str(answers), "--scorer", str(scorer),
            "--budget-share", str(budget_share), "--out", str(policy_path))
    return load_policy(policy_path).cascade.model_dump()
