"""Time the cascade optimizer on a synthetic split the size of HEADLINES train.

    python bench/optimizer_fit.py [--n 5000] [--out bench/results/optimizer_fit.json]

Three tiers (a near-free embedding answerer, an edge and a cloud tier) with continuous
scores, so every query has its own score and the sweeps run at full size. Prints the
tierlm/results.py result shape; timings depend on the machine and how busy it is.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from tierlm.router.learn.cascade_eval import CascadeData, TierOutcomes
from tierlm.router.learn.optimizer import fit_frontier


def synthetic_split(n: int, seed: int = 0) -> CascadeData:
    rng = np.random.default_rng(seed)
    tiers = {}
    for name, accuracy, cost in (("knn", 0.80, 1e-7), ("edge", 0.77, 2e-6), ("cloud", 0.80, 2e-5)):
        correct = rng.random(n) < accuracy
        score = np.clip(0.5 * correct + rng.normal(0.3, 0.25, n), 0, 1)
        fail = np.clip(0.5 * ~correct + rng.normal(0.25, 0.2, n), 0, 1)
        tiers[name] = TierOutcomes(correct, score, cost * rng.uniform(0.5, 1.5, n), fail_prob=fail)
    return CascadeData(tiers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = synthetic_split(args.n)
    rows = []
    for depth in (2, 3):
        for prerouting in (False, True):
            start = time.perf_counter()
            frontier = fit_frontier(data, max_depth=depth, prerouting=prerouting)
            rows.append({
                "name": f"depth{depth}{'-preroute' if prerouting else ''}",
                "n": args.n,
                "fit_s": round(time.perf_counter() - start, 3),
                "frontier_points": len(frontier.points),
            })
    result = {
        "bench": "optimizer_fit",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
