"""Reloading real models: an artifact written and read back gives the logits the compressed
model gave in memory, for every artifact kind.

    python bench/reload.py [--model smollm2-135m --model gemma-3-270m] [--recipe rtn-w4g64 ...] [--threads 2]

For each model and recipe (``examples/recipes/<name>.yaml``; default: one per kind of module the
artifact stores, see ``DEFAULT_RECIPES``): compress the prepared model in memory on
bench/compression.py's calibration text, take the logits of the first 128 calibration tokens,
write the artifact to a temporary folder, load it with ``load_model`` as every server does and
take the same logits. A row has ``identical`` (bitwise equal) and ``max_abs_diff``. Writes
bench/results/reload.json after every row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `bench.*` imports when run as a script

# Group-wise int4 (RTN; GPTQ; float zero points on the source's grid), int8, NF4,
# pruned + low-rank on int4 with an int8 table, and per-tensor mixed bits.
DEFAULT_RECIPES = ("rtn-w4g64", "gptq-w4g64", "grid-w4g32", "w8a8-plain", "nf4", "composite-edge", "mixed-3.5")
TOKENS = 128


def reload_row(model_name: str, recipe_name: str) -> dict:
    import torch

    from bench.compression import CALIB_TEXT, RECIPES
    from tierlm.edge import catalog
    from tierlm.edge.compress import compress_in_memory
    from tierlm.edge.decoder import load_model
    from tierlm.edge.perplexity import read_text
    from tierlm.kernels.artifact import save_artifact
    from tierlm.kernels.recipe import load_recipe

    folder = catalog.prepare(model_name)
    start = time.perf_counter()
    done = compress_in_memory(folder, load_recipe(RECIPES / f"{recipe_name}.yaml"), read_text(CALIB_TEXT))
    compress_s = time.perf_counter() - start
    ids = done.calibration[:1, :TOKENS]

    def logits(model) -> torch.Tensor:
        model.setup_cache(1, TOKENS)
        with torch.inference_mode():
            return model(ids, torch.arange(TOKENS)[None], torch.tensor([0]))

    in_memory = logits(done.model)
    with tempfile.TemporaryDirectory(prefix="tierlm-reload-") as tmp:
        save_artifact(done.model, Path(tmp) / recipe_name, folder, extra=done.manifest_extra)
        reloaded = logits(load_model(Path(tmp) / recipe_name))
    return {
        "model": model_name,
        "name": recipe_name,
        "identical": bool(torch.equal(in_memory, reloaded)),
        "max_abs_diff": float((in_memory - reloaded).abs().max()),
        "tokens": TOKENS,
        "compress_s": round(compress_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="registered model (repeatable); default: smollm2-135m and gemma-3-270m")
    parser.add_argument("--recipe", action="append", help=f"recipe name (repeatable); default: {', '.join(DEFAULT_RECIPES)}")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from tierlm.results import write_results

    torch.set_num_threads(args.threads)
    rows = []
    for model_name in args.model or ["smollm2-135m", "gemma-3-270m"]:
        for recipe_name in args.recipe or DEFAULT_RECIPES:
            rows.append(reload_row(model_name, recipe_name))
            print(rows[-1], flush=True)
            write_results("reload", rows, threads=args.threads)


if __name__ == "__main__":
    main()
