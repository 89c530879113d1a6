"""The routing study of one shipped workload: collect -> train -> fit -> eval, one command.

    python bench/routing.py --workload headlines --train-rows 600 --test-rows 600
    python bench/routing.py --workload snips
    python bench/routing.py --workload xquad --train-rows 300 --test-rows 300

Runs the tiers of ``examples/workloads/<workload>.yaml`` in-process on the first rows of the
workload's train and test files (``tierlm router collect``, resumable: answers are cached in
``--runs``), trains the scorer on train (``tierlm router train``), fits the policy for
``--budget-share`` of the dearest tier's mean cost on the scorer's out-of-fold train scores
(``tierlm router fit``, written to ``<runs>/policy.yaml``), and measures everything on the test
split (``tierlm eval cascade``): ``bench/results/routing-<workload>.json`` and its plot. The
result file also says how the fitted policy did on test against what the fit promised on train.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_SPLIT = {"headlines": "dev", "snips": "test", "xquad": "test"}


def tierlm(*args: str) -> None:
    command = [sys.executable, "-m", "tierlm.app.cli", "--log-level", "WARNING", *args]
    print("$ tierlm " + " ".join(args), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(TEST_SPLIT), required=True)
    parser.add_argument("--train-rows", type=int, default=600)
    parser.add_argument("--test-rows", type=int, default=600)
    parser.add_argument("--budget-share", type=float, default=0.3, help="fit: mean-cost budget as a share of the dearest tier's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per in-process model")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--runs", type=Path, default=Path.home() / ".cache" / "tierlm" / "routing")
    args = parser.parse_args()

    name, test = args.workload, TEST_SPLIT[args.workload]
    policy = ROOT / "examples" / "workloads" / f"{name}.yaml"
    data = ROOT / "data" / "workloads" / name
    runs = args.runs / name
    answers, scorer, fitted = runs / "answers.sqlite", runs / "scorer", runs / "policy.yaml"
    runs.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", args.train_rows), (test, args.test_rows)):
        tierlm("router", "collect", "--policy", str(policy), "--workload", str(data / f"{split}.jsonl"), "--limit", str(rows),
               "--out", str(answers), "--threads", str(args.threads), "--concurrency", str(args.concurrency))
    tierlm("router", "train", "--answers", str(answers), "--out", str(scorer), "--split", "train", "--report-split", test)
    tierlm("router", "fit", "--policy", str(policy), "--answers", str(answers), "--scorer", str(scorer),
           "--budget-share", str(args.budget_share), "--out", str(fitted))
    tierlm("eval", "cascade", "--answers", str(answers), "--scorer", str(scorer), "--workload", str(data / f"{test}.jsonl"),
           "--pool", str(data / "train.jsonl"), "--split", test, "--fit-split", "train", "--policy", str(fitted),
           "--out", str(ROOT / "bench" / "results" / f"routing-{name}.json"))


if __name__ == "__main__":
    main()
