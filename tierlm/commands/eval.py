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
