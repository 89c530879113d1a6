"""`tierlm compress`: compress a model by a recipe into an artifact folder (docs/compression.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_status = Console(stderr=True)


def compress(
    model: Annotated[str, typer.Option(help="HF folder, or a registered name (`tierlm model list`).")],
    recipe: Annotated[Path, typer.Option(help="Recipe YAML (see examples/recipes/).", exists=True, dir_okay=False)],
    calib: Annotated[Path, typer.Option(help="Calibration text: a file, or a folder whose *.txt files are joined.", exists=True)],
    out: Annotated[Path, typer.Option(help="Artifact folder to write.")],
    threads: Annotated[int, typer.Option(min=1, help="torch intra-op threads.")] = 2,
) -> None:
    """Calibrate and compress a model layer by layer and write a loadable artifact."""
    from tierlm.kernels.recipe import load_recipe

    parsed = load_recipe(recipe)

    import torch

    from tierlm.edge import catalog
    from tierlm.edge.compress import compress as run
    from tierlm.edge.perplexity import read_text
    from tierlm.errors import MissingResource

    torch.set_num_threads(threads)
    folder = catalog.prepare(model) if model in catalog.MODELS else Path(model)
    if not (folder / "config.json").is_file():
        raise MissingResource(f"{model}: not an HF folder (no config.json) nor a registered name (`tierlm model list`)")
    text = read_text(calib)
    if _status.is_terminal:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=_status
        ) as bar:
            task = bar.add_task(f"{parsed.name}: loading", total=None)

            def progress(done: int, total: int, message: str) -> None:
                bar.update(task, completed=done, total=total, description=f"{parsed.name}: {message}")

            result = run(folder, parsed, text, out, progress)
    else:
        # A log file or a pod's log: a bar there is drawn once, at the end; a line per step shows
        # how far a build of several minutes has got.
        def progress(done: int, total: int, message: str) -> None:
            _status.print(f"{parsed.name}: {message} ({done}/{total})", highlight=False)

        result = run(folder, parsed, text, out, progress)
    size = result.manifest["bytes"]
    print(
        f"{out}: {len(result.manifest['modules'])} modules compressed by {parsed.name} in {result.seconds:.0f} s "
        f"({result.calibration_sequences} calibration sequences, {result.calibration_tokens} tokens); "
        f"bytes blocks {size['blocks']:,} embeddings {size['embeddings']:,} total {size['total']:,}"
    )
