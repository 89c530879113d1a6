"""`tierlm model`: the real models available offline and their cached HF folders."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tierlm.edge import catalog

app = typer.Typer(help="Real models available offline: list them, prepare cached HF folders.")
# Status goes to stderr so stdout carries only results (e.g. the prepared folder's path).
_status = Console(stderr=True)

CacheDir = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", help="Cache directory (default: $TIERLM_CACHE or ~/.cache/tierlm)."),
]


@app.command("list")
def list_models(cache_dir: CacheDir = None) -> None:
    """List the registered models, whether their package is installed and whether they are prepared."""
    table = Table("name", "family", "gguf", "installed", "prepared", "description")
    for spec in catalog.MODELS.values():
        folder = catalog.prepared_dir(spec.name, cache_dir)
        table.add_row(
            spec.name,
            spec.family,
            spec.quantization,
            "yes" if spec.is_installed() else f"no: {spec.install}",
            str(folder) if catalog.is_prepared(folder) else "no",
            spec.description,
        )
    Console().print(table)


@app.command("prepare")
def prepare(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(catalog.MODELS)}.")],
    cache_dir: CacheDir = None,
    force: Annotated[bool, typer.Option(help="Convert again even if a prepared folder exists.")] = False,
    verify: Annotated[bool, typer.Option(help="Check the folder reproduces the GGUF's logits.")] = True,
) -> None:
    """Convert a model's GGUF once into a cached HF folder and print the folder's path."""
    start = time.perf_counter()
    with _status.status(f"{name}: starting") as status:

        def report(message: str) -> None:
            elapsed = time.perf_counter() - start
            status.update(f"[{elapsed:5.0f} s] {message}")
            _status.log(message)

        folder = catalog.prepare(name, cache_dir, force=force, verify=verify, report=report)
    print(folder)

