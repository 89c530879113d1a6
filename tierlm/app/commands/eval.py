"""`tierlm eval`: model quality measurements (perplexity on held-out text)."""

from __future__ import annotations

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

    from tierlm.edge import catalog, perplexity

    torch.set_num_threads(threads)
    start = time.perf_counter()
    with _status.status(f"loading {model}") as status:
        loaded, tokenizer = catalog.load(model, report=lambda message: status.update(message))
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
    answers: Path = typer.Option(..., "--answers", exists=True, dir_okay=False, help="Answer store from `tierlm router collect`."),
    scorer_dir: Path = typer.Option(..., "--scorer", exists=True, file_okay=False, help="Scorer from `tierlm router train`."),
    workload: Path = typer.Option(..., "--workload", exists=True, dir_okay=False, help="The workload file whose rows were collected (its test split, for the no-LLM references and the judges)."),
    split: str = typer.Option("dev", "--split", help="Split to evaluate on."),
    fit_split: str = typer.Option("train", "--fit-split", help="Split the cascade thresholds are fitted on (never the evaluated one)."),
    pool: Path | None = typer.Option(None, "--pool", exists=True, dir_okay=False, help="Workload file holding --fit-split, if not --workload (the no-LLM references learn from it)."),
    policy: Path | None = typer.Option(None, "--policy", exists=True, dir_okay=False, help="A fitted policy (`tierlm router fit`): its cascade becomes the row `policy`, and gains compare against its language-model tiers."),
    budgets: list[float] = typer.Option([], "--budget", help="Budgets per query to report (repeatable); default: a grid between the cheapest and dearest tier."),
    only: list[str] = typer.Option([], "--tier", help="Use only these tiers of the store (repeatable); default: all."),
    out: Path = typer.Option(Path("bench/results/routing.json"), "--out", help="Result file to write; the plot goes beside it (.png)."),
    threads: int = typer.Option(1, "--threads", min=1),
) -> None:
    """Fit the cascade on one split, evaluate it on another, next to every single tier, the oracle
    and the no-LLM references (knn-vote, probe); print the table, write the result and the plot."""
    from rich.table import Table

    from tierlm.config import load_policy
    from tierlm.results import write_results
    from tierlm.router.encoder_choice import offline_policy_encoder
    from tierlm.router.study.collect import AnswerStore
    from tierlm.router.study.evaluate import evaluate_cascades
    from tierlm.router.workload import load_workload

    out.parent.mkdir(parents=True, exist_ok=True)
    fitted = load_policy(policy) if policy is not None else None
    store = AnswerStore(answers)
    try:
        study = evaluate_cascades(
            store, scorer_dir, load_workload(workload), offline_policy_encoder(fitted, threads), split=split, fit_split=fit_split,
            pool=load_workload(pool) if pool is not None else None, policy=fitted,
            budgets=budgets, tiers=only,
            plot_to=out.with_suffix(".png"),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    finally:
        store.close()
    table = Table(title=f"cascade fitted on {fit_split}, measured on {split} ({study.context['queries']} queries)")
    for column in ("name", "accuracy", "95% interval", "cost_per_query", "answered"):
        table.add_column(column)
    for row in study.rows:
        answered = ", ".join(f"{t} {share:.0%}" for t, share in row.get("answered", {}).items())
        interval = "{:.3f}-{:.3f}".format(*row["accuracy_ci95"]) if "accuracy_ci95" in row else ""
        table.add_row(row["name"], f"{row['accuracy']:.3f}", interval, f"{row['cost_per_query']:.3g}", answered)
    Console().print(table)
    for tier, m in study.context["scorer_metrics"].items():
        typer.echo(f"scorer on {split} {tier}: n={m['n']} accuracy={m['accuracy']:.3f} AUROC={m['auroc']:.3f} "
                   f"Brier={m['brier']:.3f} ECE={m['ece']:.3f}")
    path = write_results(out.stem, study.rows, folder=out.parent, **study.context)
    typer.echo(f"wrote {path} and {study.plot}")
