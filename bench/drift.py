"""Drift: a router fitted on one workload meets another, learns from feedback, and recovers.

    python bench/drift.py --post-rows 600                                  # SNIPS shifts to HEADLINES
    python bench/drift.py --before headlines --after snips --post-rows 300 # and the other way

Run bench/routing.py for headlines and snips first (their answers are replayed here).

A real router (gRPC, its store, its scorer, hot reload) serves the edge and cloud tiers of the
routing study through *replay tiers* (router/study/replay.py: each answers a query with what
its model answered when bench/routing.py collected it), so thousands of requests cost no model
time and every run routes the same answers.

1. The live policy is fitted offline on the ``--before`` workload's train split (scorer + thresholds for
   ``--budget-share`` of the dearest tier's cost, as bench/routing.py does), with learning on:
   it records, explores ``--explore-share`` of requests, and alarms on ECE > ``--alarm-above``.
2. Traffic: ``--pre-rows`` rows of its test split, then the shift: ``--post-rows`` test rows of ``--after``.
   Callers give the reference answer as feedback on ``--feedback-share`` of requests.
3. Once the alarm fires, ``tierlm router refit --promote --since <alarm>`` runs every
   ``--refit-every`` requests until a candidate passes its shadow test and is promoted (the
   router reloads the file as it would in production).
4. The same traffic goes through a router that never refits, and the post-shift traffic through
   one whose policy was fitted offline on the ``--after`` workload's train (same budget rule as the refit: what the
   live policy spends there).

``bench/results/drift.json`` (``drift-<before>-<after>.json`` for another pair than the default)
rows ``never-refit``, ``online-refit`` and ``offline-refit``: accuracy
and cost per query on the post-shift requests after the promotion, or on all of them when no
candidate was promoted (the same requests for all three), and the per-request series behind its PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import yaml
from prometheus_client import REGISTRY

from tierlm.client import AsyncClient
from tierlm.router.embeddings import offline_encoder
from tierlm.router.learn.cascade_eval import CascadePolicy, evaluate_cascade
from tierlm.router.learn.offline import cascade_data
from tierlm.router.learn.scorer import Scorer, train
from tierlm.router.serve.server import start_router, stop_router
from tierlm.router.study.cascade_report import bootstrap_interval
from tierlm.router.study.collect import AnswerStore
from tierlm.router.study.fit import fit_cascade, write_policy
from tierlm.router.study.replay import ReplayGenerator, recorded_answers, start_replay
from tierlm.router.workload import load_workload
from tierlm.serving import ServerConfig
from tierlm.results import write_results

ROOT = Path(__file__).resolve().parents[1]
TIERS = ["edge", "cloud"]
#: Each shipped label workload and the split its routing study measures on.
TEST_SPLIT = {"headlines": "dev", "snips": "test"}
DEFAULT_SHIFT = ("snips", "headlines")


@dataclass(frozen=True)
class Served:
    """One request as the caller saw it."""

    index: int
    workload: str
    tier: str
    correct: bool
    cost: float
    feedback: bool


@dataclass
class Events:
    shift: int
    alarm: int | None = None
    alarm_metric: dict | None = None
    refits: list[dict] | None = None
    promoted: int | None = None


def tierlm_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tierlm.app.cli", "--log-level", "WARNING", *args]


def policy_template(path: Path, ports: dict[str, int], args: argparse.Namespace, learning: bool) -> None:
    """The study's edge and cloud tiers (models, prices) at the replay servers, prompts verbatim."""
    study = yaml.safe_load((ROOT / "examples" / "workloads" / "headlines.yaml").read_text())
    tiers = [{"name": t["name"], "address": f"127.0.0.1:{ports[t['name']]}", "model": t["model"], "cost": t["cost"],
              "timeout_s": 10.0} for t in study["tiers"] if t["name"] in TIERS]
    document = {"tiers": tiers, "cascade": {"order": TIERS}}
    if learning:
        document["learning"] = {
            "record": True,
            "explore": {"share": args.explore_share, "budget_per_day": 1.0},
            "alarm": {"metric": "ece", "above": args.alarm_above, "window": args.alarm_window, "min_labels": args.alarm_min_labels},
        }
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def gauge(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def serve_traffic(
    policy: Path, ledger: Path, rows: list, correct: dict[tuple[str, str], bool], args: argparse.Namespace,
    events: Events | None,
) -> list[Served]:
    """Route ``rows`` one by one through a router on ``policy``; with ``events``, give feedback,
    watch the alarm and refit as the operator's loop would."""
    # One caller, the bench: keys would separate no one (feedback still checks the request's tenant).
    server, service = await start_router(policy, ServerConfig(), ledger, auth=False)
    watcher = asyncio.create_task(service.watch_files(service.file_watch(), interval_s=0.2))
    rng = random.Random(args.seed)
    served: list[Served] = []
    since = 0.0
    next_refit: int | None = None
    try:
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout_s=60) as client:
            for index, (workload, row) in enumerate(rows):
                answer = await client.complete(row.query, max_tokens=1)
                give = events is not None and rng.random() < args.feedback_share
                if give:
                    await client.feedback(answer.request_id, reference=row.reference[0])
                served.append(Served(index, workload, answer.tier, correct[(answer.tier, row.query)], answer.cost, give))
                if events is None or events.promoted is not None:
                    continue
                if events.alarm is None and index >= events.shift and gauge_alarm():
                    events.alarm, since, next_refit = index, time.time(), index + args.refit_every
                    events.alarm_metric = {t: gauge("tierlm_router_live_ece", tier=t) for t in TIERS}
                    print(f"  alarm at request {index}: ECE {events.alarm_metric}", flush=True)
                if next_refit is not None and index >= next_refit:
                    await service.drain_background()  # explorations of the requests so far are recorded
                    # Counted before the refit: the router may reload the promoted file before it exits.
                    reloads = gauge("tierlm_router_policy_reloads_total", result="applied")
                    decision = await refit(policy, ledger, since, args)
                    decision["at"] = index
                    events.refits = [*(events.refits or []), decision]
                    print(f"  refit at request {index}: {decision['action']}", flush=True)
                    if decision["action"] == "promoted":
                        await wait_for_reload(reloads)
                        events.promoted = index
                    next_refit = index + args.refit_every
            await service.drain_background()
    finally:
        watcher.cancel()
        await stop_router(server, service)
    return served


def gauge_alarm() -> bool:
    return any(gauge("tierlm_router_calibration_alarm", tier=t) == 1 for t in TIERS)


async def refit(policy: Path, ledger: Path, since: float, args: argparse.Namespace) -> dict:
    since_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))
    process = await asyncio.create_subprocess_exec(
        *tierlm_command("router", "refit", "--policy", str(policy), "--store", str(ledger), "--since", since_iso,
                        "--promote", "--json", "--min-explored", str(args.min_explored)),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        message = err.decode().strip().splitlines()[-1] if err.strip() else f"exit {process.returncode}"
        return {"action": "not-enough-data" if "a refit needs at least" in message else "failed", "error": message}
    return json.loads(out)


async def wait_for_reload(applied_before: float, timeout_s: float = 30.0) -> None:
    """Until the router has applied a policy file more than ``applied_before`` times."""
    deadline = time.monotonic() + timeout_s
    while gauge("tierlm_router_policy_reloads_total", result="applied") <= applied_before:
        if time.monotonic() > deadline:
            raise TimeoutError("the router did not reload the promoted policy")
        await asyncio.sleep(0.1)


def summary(name: str, served: list[Served], **extra: object) -> dict:
    correct = np.array([s.correct for s in served], dtype=float)
    low, high = bootstrap_interval(correct)
    return {"name": name, "requests": len(served), "accuracy": float(correct.mean()), "accuracy_ci95": [low, high],
            "cost_per_query": float(np.mean([s.cost for s in served])), **extra}


def plot(path: Path, runs: dict[str, list[Served]], events: Events, window: int, after: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, cost) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, served in runs.items():
        index = np.array([s.index for s in served])
        kernel = np.ones(window) / window
        for axis, values in ((acc, [s.correct for s in served]), (cost, [s.cost for s in served])):
            rolling = np.convolve(np.array(values, dtype=float), kernel, mode="valid")
            axis.plot(index[window - 1:], rolling, label=name)
    for axis in (acc, cost):
        axis.axvline(events.shift, color="grey", linestyle="--", label=f"traffic shifts to {after}")
        if events.alarm is not None:
            axis.axvline(events.alarm, color="red", linestyle=":", label="calibration alarm")
        for refit in events.refits or []:
            if refit["action"] == "rejected":
                axis.axvline(refit["at"], color="orange", linestyle=":", label="refit rejected (shadow test)")
        if events.promoted is not None:
            axis.axvline(events.promoted, color="green", linestyle="-", label="refit promoted")
    acc.set_ylabel(f"accuracy (rolling {window})")
    cost.set_ylabel(f"cost per query (rolling {window})")
    cost.set_xlabel("request")
    handles, labels = acc.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    acc.legend(unique.values(), unique.keys(), fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path.home() / ".cache" / "tierlm" / "routing",
                        help="bench/routing.py's folder (answer stores of headlines and snips)")
    parser.add_argument("--before", choices=sorted(TEST_SPLIT), default=DEFAULT_SHIFT[0], help="the workload the live policy is fitted on")
    parser.add_argument("--after", choices=sorted(TEST_SPLIT), default=DEFAULT_SHIFT[1], help="the workload the traffic shifts to")
    parser.add_argument("--pre-rows", type=int, default=300)
    parser.add_argument("--post-rows", type=int, default=600)
    parser.add_argument("--budget-share", type=float, default=0.3)
    parser.add_argument("--feedback-share", type=float, default=0.5)
    parser.add_argument("--explore-share", type=float, default=0.5)
    parser.add_argument("--alarm-above", type=float, default=0.15)
    parser.add_argument("--alarm-window", type=int, default=100)
    parser.add_argument("--alarm-min-labels", type=int, default=30)
    parser.add_argument("--refit-every", type=int, default=50)
    parser.add_argument("--min-explored", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=50, help="rolling window of the plot")
    args = parser.parse_args()

    if args.before == args.after:
        parser.error("--before and --after must be different workloads")
    before, after = (args.before, TEST_SPLIT[args.before]), (args.after, TEST_SPLIT[args.after])
    stores = {name: AnswerStore(args.runs / name / "answers.sqlite") for name in (before[0], after[0])}
    work = args.runs / "drift"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    encoder = offline_encoder(1)

    # Who answered what: replay tiers serve the collected answers of both workloads' splits.
    correct: dict[tuple[str, str], bool] = {}
    replays = {tier: ReplayGenerator(tier, {}) for tier in TIERS}
    for name, split in (before, after):
        for tier in TIERS:
            answers = recorded_answers(stores[name], split, tier)
            replays[tier].add(answers)
            correct.update({(tier, query): bool(a.record.correct) for query, a in answers.items()})
    known = {q for (tier, q) in correct if tier == TIERS[0]} & {q for (tier, q) in correct if tier == TIERS[1]}
    rows = []
    for (name, split), limit in ((before, args.pre_rows), (after, args.post_rows)):
        found = [row for row in load_workload(ROOT / "data" / "workloads" / name / f"{split}.jsonl").rows if row.query in known]
        if len(found) < limit:
            raise SystemExit(f"{name} {split}: {len(found)} rows have both tiers' answers, {limit} asked; "
                             f"run bench/routing.py --workload {name} first")
        rows += [(name, row) for row in found[:limit]]
    shift = args.pre_rows

    async def run() -> tuple[dict[str, list[Served]], Events, dict]:
        servers = await start_replay(replays.values())
        ports = {tier: s.port for tier, s in servers.items()}
        try:
            # The live policy: fitted offline on the first workload's train, as bench/routing.py fits it.
            template = work / "template.yaml"
            policy_template(template, ports, args, learning=True)
            live_scorer = work / f"scorer-{before[0]}"
            train(stores[before[0]].records("train", TIERS), encoder, split="train").save(live_scorer)
            fitted = fit_cascade(stores[before[0]], live_scorer, encoder, budget_share=args.budget_share, tiers=TIERS)
            live = work / "live.yaml"
            write_policy(template, live, live_scorer, fitted, answers=f"the routing study's {before[0]} answers")
            frozen = work / "never-refit.yaml"
            policy_template(frozen, ports, args, learning=False)
            write_policy(frozen, frozen, live_scorer, fitted, answers=f"the routing study's {before[0]} answers")

            # Offline-refit: fitted on the new workload's train for what the live policy spends on it.
            new_scorer = work / f"scorer-{after[0]}"
            train(stores[after[0]].records("train", TIERS), encoder, split="train").save(new_scorer)
            spend = evaluate_cascade(cascade_data(stores[after[0]].records("train", TIERS), Scorer.load(live_scorer, encoder)),
                                     CascadePolicy(tuple(fitted.point.policy.order), dict(fitted.point.policy.thresholds)))
            offline = work / "offline-refit.yaml"
            policy_template(offline, ports, args, learning=False)
            refitted = fit_cascade(stores[after[0]], new_scorer, encoder, budget=spend.cost_per_query, tiers=TIERS)
            write_policy(offline, offline, new_scorer, refitted, answers=f"the routing study's {after[0]} train answers")

            events = Events(shift=shift)
            print(f"online: {len(rows)} requests, shift at {shift}", flush=True)
            online = await serve_traffic(live, work / "ledger.sqlite", rows, correct, args, events)
            print("never-refit", flush=True)
            never = await serve_traffic(frozen, work / "never.sqlite", rows, correct, args, None)
            print("offline-refit", flush=True)
            offline_served = [replace(s, index=s.index + shift)
                              for s in await serve_traffic(offline, work / "offline.sqlite", rows[shift:], correct, args, None)]
            fits = {name: {"cascade": fit.point.policy.to_policy_section(fit.budget)["cascade"],
                           "fit_accuracy": fit.point.accuracy, "fit_cost_per_query": fit.point.cost_per_query}
                    for name, fit in (("live", fitted), ("offline_refit", refitted))}
            return {"never-refit": never, "online-refit": online, "offline-refit": offline_served}, events, fits
        finally:
            for server in servers.values():
                await server.stop(grace_s=0)

    runs, events, fits = asyncio.run(run())
    # Compared after the promotion; with none, over all the post-shift traffic (then the online
    # router served it with the live policy throughout, as never-refit did).
    settled = events.promoted if events.promoted is not None else shift - 1
    post = {name: [s for s in served if s.index > settled] for name, served in runs.items()}
    online_post = post["online-refit"]
    feedback_labels = sum(s.feedback for s in runs["online-refit"][shift:settled + 1]) if events.promoted is not None else None
    promoted = next((r for r in events.refits or [] if r["action"] == "promoted"), None)
    rows_out = [summary("never-refit", post["never-refit"]),
                summary("online-refit", online_post, feedback_labels=feedback_labels,
                        refit_labels=promoted["labels"] if promoted else None),
                summary("offline-refit", post["offline-refit"])]
    if online_post:
        gain = np.array([o.correct for o in online_post], dtype=float) - np.array([n.correct for n in post["never-refit"]], dtype=float)
        rows_out[1]["gain_vs_never_refit"] = float(gain.mean())
        rows_out[1]["gain_vs_never_refit_ci95"] = list(bootstrap_interval(gain))
    pre = {name: summary(name, [s for s in served if s.index < shift]) for name, served in runs.items() if name != "offline-refit"}
    name = "drift" if (args.before, args.after) == DEFAULT_SHIFT else f"drift-{args.before}-{args.after}"
    plot(ROOT / "bench" / "results" / f"{name}.png", runs, events, args.window, args.after)
    path = write_results(
        name, rows_out, workloads={"before": f"{before[0]} {before[1]}", "after": f"{after[0]} {after[1]}"},
        requests={"before_shift": shift, "after_shift": len(rows) - shift, "after_promotion": len(online_post)},
        alarm_at=events.alarm, promoted_at=events.promoted,
        settings={k: v for k, v in vars(args).items() if k != "runs"}, events=asdict(events), fits=fits,
        before_shift={name: {k: v for k, v in row.items() if k != "name"} for name, row in pre.items()},
        series={name: [[s.index, s.tier, int(s.correct), s.cost] for s in served] for name, served in runs.items()},
    )
    print(json.dumps(rows_out, indent=2))
    print(f"-> {path} and its PNG")


if __name__ == "__main__":
    main()
