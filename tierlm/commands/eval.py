"""`tierlm eval`: model quality measurements (perplexity on held-out text)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

app = typer.Typer(help="Evaluate models: perplexity on held-out text.", no_args_is_help=True)
_status = Console(stderr=True)


@app.callback()
def _group() -> None:
    """Evaluate models: perplexity on held-out text."""
    # A callback keeps `eval` a command group even while it has a single command.


@app.command("ppl")
def ppl(
    model: Annotated[
        str, typer.Option(help="HF folder, compressed artifact folder (`tierlm compress`), .gguf file, or a registered name.")
    ],
    text: Annotated[Path, typer.Option(help="A text file, or a folder whose *.txt files are joined.")],
    context: Annotated[int, typer.Option(min=2, help="Tokens per window.")] = 512,
    stride: Annotated[int, typer.Option(min=1, help="Tokens between window starts.")] = 256,
    max_tokens: Annotated[Optional[int], typer.Option(min=2, help="Score only the first N tokens.")] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch intra-op threads.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a line.")] = False,
) -> None:
    """Sliding-window perplexity of a causal LM on a text, with a fixed context."""
    import torch

    from tierlm import models, perplexity

    torch.set_num_threads(threads)
    start = time.perf_counter()
    with _status.status(f"loading {model}") as status:
        loaded, tokenizer = models.load(model, report=lambda message: status.update(message))
    load_seconds = time.perf_counter() - start
    ids, bos = perplexity.encode(tokenizer, perplexity.read_text(text), max_tokens)

    with Progress(
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=_status
    ) as bar:
        task = bar.add_task("tokens", total=None)
        try:
            result = perplexity.perplexity(
                loaded,
                ids,
                context=context,
                stride=stride,
                bos_id=bos,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    if as_json:
        record = {"model": model, "text": str(text), "threads": threads, "load_seconds": load_seconds}
        print(json.dumps(record | result.to_dict()))
    else:
        print(f"{result.summary()}  (load {load_seconds:.1f} s, {threads} threads)  {model} on {text}")


@app.command()
def cascade(
    db: Path = typer.Option(..., "--db", exists=True, dir_okay=False, help="Answer store from `tierlm router collect`."),
    scorer_dir: Path = typer.Option(..., "--scorer", exists=True, file_okay=False, help="Scorer from `tierlm router train`."),
    split: str = typer.Option("dev", "--split", help="Split to evaluate on."),
    fit_split: str = typer.Option("train", "--fit-split", help="Split the cascade thresholds are fitted on (never the evaluated one)."),
    budgets: list[float] = typer.Option([], "--budget", help="Budgets per query to report (repeatable); default: a grid between the cheapest and dearest tier."),
    only: list[str] = typer.Option([], "--tier", help="Use only these tiers of the store (repeatable); default: all."),
    out_dir: Path = typer.Option(Path("bench/results"), "--out-dir", help="Where routing.json and cost_accuracy.png go."),
    threads: int = typer.Option(1, "--threads", min=1),
) -> None:
    """Fit the cascade on one split, evaluate it on another, next to every single tier, the oracle
    and the no-LLM knn-vote reference; print the table, write routing.json and cost_accuracy.png."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from tierlm.results import write_results
    from tierlm.router.cascade_report import frontier_on, routing_rows
    from tierlm.router.collect import AnswerStore
    from tierlm.router.datasets import load_headlines
    from tierlm.router.embeddings import offline_encoder
    from tierlm.router.frontier_plot import plot_cost_accuracy
    from tierlm.router.knn import KnnVote
    from tierlm.router.metrics import tier_score_metrics
    from tierlm.router.offline import cascade_data, common_queries, fit_scores, prerouter_fail_probs
    from tierlm.router.optimizer import fit_frontier
    from tierlm.router.scorer import Scorer

    if split == fit_split:
        raise typer.BadParameter("fitting and evaluating on one split reports in-sample numbers", param_hint="--fit-split")
    store = AnswerStore(db)
    fit_records, test_records = store.records(fit_split, only or None), store.records(split, only or None)
    if not fit_records or not test_records:
        raise typer.BadParameter(f"{db} needs answers on both {fit_split!r} and {split!r}")
    encoder = offline_encoder(threads)
    scorer = Scorer.load(scorer_dir, encoder)
    queries = sorted({r.query for r in (*fit_records, *test_records)})
    embed = dict(zip(queries, encoder.encode(queries)))
    fit_fail, test_fail = prerouter_fail_probs(fit_records, test_records, embed)
    # Thresholds are fitted on held-out scores: out-of-fold ones if the scorer trained on fit_split.
    held_out_scores = fit_scores(scorer, fit_split)
    fit_data = cascade_data(fit_records, scorer, fit_fail, scores=held_out_scores)
    test_data = cascade_data(test_records, scorer, test_fail)
    frontiers = {"cascade": fit_frontier(fit_data), "cascade-preroute": fit_frontier(fit_data, prerouting=True)}
    tier_costs = [float(t.cost.mean()) for t in test_data.tiers.values()]
    cheapest = min(p.cost_per_query for p in frontiers["cascade"].points)
    grid = budgets or sorted({float(b) for b in np.geomspace(max(cheapest, 1e-12), max(tier_costs) * 1.05, 6)})
    rows = routing_rows(test_data, [b for b in grid if b >= cheapest], frontiers)

    # The no-LLM reference: majority of the 8 nearest training headlines (DESIGN §6).
    pool = load_headlines(fit_split)
    knn = KnnVote(encoder.encode([e.headline for e in pool]), [e.label for e in pool])
    by_id = {r.query_id: r for r in test_records}
    ids = common_queries(test_records)
    test_rows = {e.id: e for e in load_headlines(split)}
    votes = knn.predict(np.stack([embed[by_id[i].query] for i in ids]))
    knn_accuracy = float(np.mean([v.label == test_rows[i].label for v, i in zip(votes, ids)]))
    rows.append({"name": "knn-vote", "accuracy": knn_accuracy, "cost_per_query": 0.0})

    table = Table(title=f"cascade fitted on {fit_split}, measured on {split} ({test_data.n} queries)")
    for column in ("name", "accuracy", "95% interval", "cost_per_query", "answered"):
        table.add_column(column)
    for row in rows:
        answered = ", ".join(f"{t} {share:.0%}" for t, share in row.get("answered", {}).items())
        interval = "{:.3f}-{:.3f}".format(*row["accuracy_ci95"]) if "accuracy_ci95" in row else ""
        table.add_row(row["name"], f"{row['accuracy']:.3f}", interval, f"{row['cost_per_query']:.3g}", answered)
    Console().print(table)
    scorer_metrics = {tier: dataclasses.asdict(m) for tier, m in tier_score_metrics(test_data).items()}
    for tier, m in scorer_metrics.items():
        typer.echo(f"scorer on {split} {tier}: n={m['n']} accuracy={m['accuracy']:.3f} AUROC={m['auroc']:.3f} "
                   f"Brier={m['brier']:.3f} ECE={m['ece']:.3f}")
    path = write_results("routing", rows, folder=out_dir, split=split, fit_split=fit_split, queries=test_data.n,
                         fit_queries=fit_data.n, tiers=list(test_data.tiers), scorer=str(scorer_dir),
                         scorer_metrics=scorer_metrics,
                         fit_scores="out-of-fold" if held_out_scores is not None else "held-out")
    singles = {r["name"]: (r["cost_per_query"], r["accuracy"]) for r in rows if r["name"].endswith("-only")}
    oracle = next((r["cost_per_query"], r["accuracy"]) for r in rows if r["name"] == "oracle")
    plot = plot_cost_accuracy(
        out_dir / "cost_accuracy.png", frontier=frontier_on(frontiers["cascade"], test_data),
        frontier_label=f"cascade (fitted on {fit_split})", single_tiers=singles, oracle=oracle,
        baselines={"knn-vote": (0.0, knn_accuracy)}, log_x=True, title=f"HEADLINES {split}: accuracy vs cost per query",
    )
    typer.echo(f"wrote {path} and {plot}")
