"""Compressing a model folder with our decoder: load, tokenize calibration text, compress, save.

The kernels compress any :class:`~tierlm.kernels.decoder.CompressibleDecoder` in place
(:func:`~tierlm.kernels.pipeline.compress_model`); this module supplies the decoder and the
tokens, and writes the artifact the edge runtime loads.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tierlm.edge.decoder import Transformer, load_model
from tierlm.edge.perplexity import encode
from tierlm.kernels.artifact import is_artifact, read_manifest, save_artifact
from tierlm.kernels.mixed import plan_mixed_precision
from tierlm.kernels.pipeline import Progress, compress_model
from tierlm.kernels.recipe import Recipe
from tierlm.kernels.vllm_export import ExportSummary, export_for_vllm


@dataclass
class CompressionResult:
    """What :func:`compress` did: timings, calibration size, per-module notes, the manifest."""

    seconds: float
    calibration_sequences: int
    calibration_tokens: int
    layer_seconds: list[float] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


def calibration_tokens(tokenizer: Any, text: str, sequences: int, seq_len: int) -> torch.Tensor:
    """``[n, seq_len]`` token ids: consecutive disjoint chunks of ``text``, at most ``sequences``.

    Each row starts with the BOS token when the tokenizer starts sequences with one (Gemma),
    so calibration sees inputs shaped like real prompts. Fewer rows come back when the text is
    short; the caller reports how many.
    """
    ids, bos = encode(tokenizer, text)
    span = seq_len - (bos is not None)
    n = min(sequences, len(ids) // span)
    if n == 0:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than one sequence of {seq_len}")
    rows = torch.tensor(ids[: n * span], dtype=torch.long).reshape(n, span)
    if bos is not None:
        rows = torch.cat([torch.full((n, 1), bos, dtype=torch.long), rows], dim=1)
    return rows


@dataclass
class Compressed:
    """A model compressed in memory (:func:`compress_in_memory`), not yet written."""

    model: Transformer
    calibration: torch.Tensor  # [n, seq_len] token ids it was calibrated on
    layer_seconds: list[float]
    manifest_extra: dict[str, Any]  # the recipe (and mixed-precision plan) for the manifest


def compress_in_memory(
    model_path: str | Path, recipe: Recipe, calib_text: str, progress: Progress | None = None
) -> Compressed:
    """Load an HF folder with our decoder and compress it by ``recipe``, in memory."""
    from transformers import AutoTokenizer

    model_path = Path(model_path)
    model = load_model(model_path, torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    cal = recipe.calibration
    tokens = calibration_tokens(tokenizer, calib_text, cal.sequences, cal.seq_len)
    extra: dict[str, Any] = {"recipe": recipe.model_dump(mode="json")}
    resolved = recipe
    if recipe.mixed_precision is not None:
        total = len(model.layers) + 1
        plan = plan_mixed_precision(model, recipe, tokens, lambda message: progress and progress(0, total, message))
        resolved = plan.recipe(recipe)
        extra["mixed_precision_plan"] = plan.summary()
    layer_seconds = compress_model(model, resolved, tokens, progress)
    return Compressed(model, tokens, layer_seconds, extra)


def compress(
    model_path: str | Path,
    recipe: Recipe,
    calib_text: str,
    out: str | Path,
    progress: Progress | None = None,
) -> CompressionResult:
    """Load an HF folder with our decoder, compress it by ``recipe``, write the artifact to ``out``."""
    start = time.perf_counter()
    done = compress_in_memory(model_path, recipe, calib_text, progress)
    seconds = time.perf_counter() - start
    tokens = done.calibration
    manifest = save_artifact(
        done.model,
        out,
        Path(model_path),
        extra={
            **done.manifest_extra,
            "calibration": {"sequences": int(tokens.shape[0]), "seq_len": int(tokens.shape[1])},
            "compress_seconds": round(seconds, 1),
        },
    )
    return CompressionResult(seconds, int(tokens.shape[0]), int(tokens.numel()), done.layer_seconds, manifest)


def artifact_matches(folder: str | Path, recipe: Recipe) -> bool:
    """Whether `folder` holds an artifact compressed by this very recipe (a cache can keep it)."""
    return is_artifact(folder) and read_manifest(folder).get("recipe") == recipe.model_dump(mode="json")


def build_artifact(
    model_path: str | Path, recipe: Recipe, calib_text: str, out: str | Path, progress: Progress | None = None
) -> CompressionResult:
    """:func:`compress` into a staging folder beside `out` that replaces `out` only when complete,
    so an interrupted build leaves nothing for a cache to trust."""
    out = Path(out)
    staging = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        result = compress(model_path, recipe, calib_text, staging, progress)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def export_artifact_for_vllm(artifact: str | Path, out: str | Path) -> ExportSummary:
    """Write the artifact at ``artifact`` as the compressed-tensors checkpoint vLLM loads
    (:func:`~tierlm.kernels.vllm_export.export_for_vllm` on the artifact's decoder)."""
    return export_for_vllm(load_model(artifact), artifact, out)
