"""The routing study of one shipped workload: collect -> train -> fit -> eval, one command.

    python bench/routing.py --workload headlines --train-rows 300 --test-rows 300   # ~30 min on 2 cores
    python bench/routing.py --workload snips --train-rows 300 --test-rows 300       # ~45 min
    python bench/routing.py --workload xquad --train-rows 100 --test-rows 100       # ~15 min

(the committed results; the time is the language-model tiers answering every row once, after
which a rerun reads the stored answers and takes a few minutes).

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
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_SPLIT = {"headlines": "dev", "snips": "test", "xquad": "test"}


def shown(path: Path) -> str:
    """``path`` as the result file names it, quoted for a shell: relative to the checkout, or under ``~``."""
    if path.is_relative_to(ROOT):
        return shlex.quote(str(path.relative_to(ROOT)))
    if path.is_relative_to(Path.home()):
        return "~/" + shlex.quote(str(path.relative_to(Path.home())))
    return shlex.quote(str(path))


def tierlm(*args: str | Path) -> str:
    """Run one CLI step in the checkout; returns it as the result file records it."""
    step = " ".join(["tierlm", *(shown(a) if isinstance(a, Path) else shlex.quote(a) for a in args)])
    print(f"$ {step}", flush=True)
    subprocess.run([sys.executable, "-m", "tierlm.app.cli", "--log-level", "WARNING", *map(str, args)], check=True, cwd=ROOT)
    return step


def name_the_run(result: Path, steps: list[str]) -> None:
    """The result file's command becomes this script's (what reproduces the table), with the
    CLI steps it ran, and its paths are shown as :func:`shown` gives them."""
    document = json.loads(result.read_text())
    document["command"] = shlex.join(["python", "bench/routing.py", *sys.argv[1:]])
    document["steps"] = steps
    for key in ("workload", "scorer"):
        document[key] = shown(Path(document[key]))
    result.write_text(json.dumps(document, indent=2) + "\n")


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
    runs = args.runs.expanduser().resolve() / name
    answers, scorer, fitted = runs / "answers.sqlite", runs / "scorer", runs / "policy.yaml"
    result = ROOT / "bench" / "results" / f"routing-{name}.json"
    runs.mkdir(parents=True, exist_ok=True)
    steps = [
        tierlm("router", "collect", "--policy", policy, "--workload", data / f"{split}.jsonl", "--limit", str(rows),
               "--out", answers, "--threads", str(args.threads), "--concurrency", str(args.concurrency))
        for split, rows in (("train", args.train_rows), (test, args.test_rows))
    ]
    steps.append(tierlm("router", "train", "--answers", answers, "--out", scorer, "--split", "train", "--report-split", test))
    steps.append(tierlm("router", "fit", "--policy", policy, "--answers", answers, "--scorer", scorer,
                        "--budget-share", str(args.budget_share), "--out", fitted))
    steps.append(tierlm("eval", "cascade", "--answers", answers, "--scorer", scorer, "--workload", data / f"{test}.jsonl",
                        "--pool", data / "train.jsonl", "--split", test, "--fit-split", "train", "--policy", fitted,
                        "--out", result))
    name_the_run(result, steps)


if __name__ == "__main__":
    main()
