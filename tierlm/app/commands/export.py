"""`tierlm export`: write a compressed artifact in another engine's checkpoint format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Export compressed artifacts for other engines (vLLM).")
_status = Console(stderr=True)


@app.command("vllm")
def vllm(
    artifact: Annotated[Path, typer.Option(help="Artifact folder written by `tierlm compress`.", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option(help="Folder to write the compressed-tensors checkpoint to.")],
) -> None:
    """Write an artifact as a compressed-tensors checkpoint that vLLM loads (int4 W4A16, int8 W8A8).

    The packed tensors are reused as they are; modules vLLM cannot run (AWQ and SmoothQuant
    input scales, act-order, int3, NF4, sparse or low-rank) are refused with the reason.
    """
    from tierlm.app.errors import CommandError
    from tierlm.edge.compress import export_artifact_for_vllm
    from tierlm.errors import MissingResource
    from tierlm.kernels.artifact import is_artifact
    from tierlm.kernels.vllm_export import ExportError

    if not is_artifact(artifact):
        raise MissingResource(f"{artifact}: not a tierlm artifact (no tierlm_compression.json); `tierlm compress` writes one")
    with _status.status(f"exporting {artifact} for vLLM"):
        try:
            summary = export_artifact_for_vllm(artifact, out)
        except ExportError as exc:
            raise CommandError(f"cannot export for vLLM: {exc}") from None
    schemes = ", ".join(f"{n} linears {fmt}" for fmt, n in summary.schemes.items())
    tables = f"; float32 tables: {', '.join(summary.dequantized)}" if summary.dequantized else ""
    print(f"{out}: {schemes}{tables}")
