"""Write docs/benchmarks.md from bench/results/*.json: every number in it comes from a result file.

    python bench/report.py            # rewrite docs/benchmarks.md
    python bench/report.py --check    # exit 1 if docs/benchmarks.md differs from what the results give

Each result file becomes one section: what the bench measures, the command, machine and date
the file records, its rows as a table, and its plot when one sits beside it. tests/test_benchmarks_doc.py
fails when the committed page and the results disagree, so a number cannot go stale in the docs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCUMENT = ROOT / "docs" / "benchmarks.md"

#: What each bench measures, in the order the page shows them (others follow, by name).
ABOUT = {
    "demo": "`make demo`: the local stack (knn, edge, cloud, router) answering HEADLINES dev queries; each tier alone and the "
            "cascade. The single-tier passes run side by side and the cascade runs alone, so latencies compare within a pass only. "
            "`stack_ready_s` counts from the command's start, so it includes preparing the models and building the edge "
            "artifact when the cache is empty.",
    "demo-static": "The same demo with `encoder: static` (examples/demo-static/policy.yaml): retrieval, the knn tier and the "
                   "scorer on the static table fitted to the pool; its scorer and cascade refitted on train by `--refit`.",
    "routing-headlines": "Routing study on HEADLINES (bench/routing.py): every tier alone, fitted cascades, on the test split.",
    "routing-snips": "Routing study on SNIPS intents (bench/routing.py).",
    "routing-xquad": "Routing study on XQuAD English extractive QA (bench/routing.py).",
    "drift": "Drift (bench/drift.py): SNIPS traffic shifts to HEADLINES; alarm, refit, shadow test, promotion, against never refitting and an offline refit.",
    "drift-headlines-snips": "Drift the other way (bench/drift.py --before headlines --after snips): HEADLINES traffic shifts to SNIPS.",
    "soak": "Soak (bench/soak.py): a long run of requests through the stack with tiers killed on the way; nothing may be lost.",
    "store": "The router's store (bench/store.py): ledger and budget operations on SQLite and PostgreSQL.",
    "router": "Router overhead (bench/router.py): what routing adds on top of the tiers' own latency, for a pass-through "
              "proxy (the floor) and the learned path of the demo's policy with instant scripted tiers; `encoder` says which "
              "sentence encoder embeds every query (minilm: examples/demo/policy.yaml; static: examples/demo-static/policy.yaml, "
              "whose knn tier votes inside the router, `in_router`). Open-loop rows run at fractions of each path's own "
              "saturation (`fraction`) and at 400 requests/s, 80% of the 500/s target.",
    "static_demonstrations": "Do the static encoder's retrieved demonstrations cost the cloud model accuracy? "
                             "(bench/static_demonstrations.py) On HEADLINES train only: a 4,000-row pool, the static encoder "
                             "fitted to it, held-out train rows answered by gemma-3-270m with each retrieval's 8 demonstrations.",
    "encoders": "The router's sentence encoders (bench/encoders.py): CPU per query against what each keeps of MiniLM on "
                "HEADLINES dev (cosine, the demonstrations it retrieves, the knn vote, a linear probe). `static-fitted` is "
                "the policy setting `encoder: static`; everything fitted saw train only.",
    "edge": "Edge runtime decode speed (bench/edge.py) against llama.cpp. Rows `<name> compiled` serve the same artifact "
            "with `tierlm edge serve --compile` (the decode step through torch.compile); their `load_s` includes building "
            "its graphs from an empty inductor cache.",
    "edge_confirm": "A second bench/edge.py run, same settings, fp32 and the two W8A8 artifacts only (w8a8-plain is "
                    "within +5% perplexity): llama.cpp's tokens/s moves between runs on this shared machine (compare "
                    "its row here with edge's), so the ratio to it is shown from two runs.",
    "edge_step": "Where a decode step's time goes (bench/edge_step.py), at one row and at eight (`_8_rows`: the step "
                 "eight streams share; `speedup_8_rows`: eight one-row steps' time over one eight-row step): the output layer, the blocks' linears "
                 "(called once each in the step's order, the sequence timed, so each weight comes from memory as in a "
                 "step; where a layer's tail runs as one onnxruntime graph, edge/fused_layers.py, that run with its "
                 "norms and activation) and everything else (norms, attention, rope, cache, dispatch), per artifact and thread count, "
                 "beside llama.cpp's whole step; `compiled_step_ms` is the same step through torch.compile. `pool`: `shared`, "
                 "`tierlm edge serve`'s split of the threads (onnxruntime's graphs on one shared pool, torch on one thread), or `own` "
                 "(a pool per graph, torch on every thread: the split before).",
    "compression": "The bits-per-weight frontier (bench/compression.py): perplexity, stored bytes and decode speed of our recipes "
                   "and llama.cpp's types, per model. Both models come from 4-bit GGUF files, so formats on the source's grid "
                   "re-quantize almost losslessly for that reason alone (the caveat under each plot).",
    "reload": "Reloading the real models (bench/reload.py): per artifact kind, the logits of a model compressed in memory "
              "against those of its artifact written and loaded back (`identical`: bitwise equal).",
    "speculative": "Speculative decoding across tiers (bench/speculative.py): an edge drafter, a cloud verifier, simulated round trips.",
    "cloud": "Cloud tier throughput (bench/cloud.py).",
    "install": "Install footprint per extra (bench/install.py).",
}
_META = {"bench", "machine", "date", "command", "rows"}


def number(value: object) -> str:
    """A value as the table shows it: 4 significant digits, small and large numbers in e-notation."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"[{number(value[0])}, {number(value[1])}]"
    return str(value).replace("|", "\\|")


def section(name: str, document: dict, stems: set[str]) -> str:
    rows = document.get("rows", [])
    columns: list[str] = []
    for row in rows:
        columns += [key for key, value in row.items() if key not in columns and _shown(value)]
    lines = [f"## {name}", ""]
    if name in ABOUT:
        lines += [ABOUT[name], ""]
    lines += [f"`{document.get('command', '?')}`  ", f"{document.get('machine', '?')}, {document.get('date', '?')}", ""]
    settings = {k: v for k, v in document.items() if k not in _META and isinstance(v, (str, int, float, bool))}
    if settings:
        lines += ["; ".join(f"{k}: {number(v)}" for k, v in settings.items()), ""]
    if rows:
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(number(row.get(c)) for c in columns) + " |" for row in rows]
        lines.append("")
    for plot in plots(name, stems):
        lines += [f"![{plot.stem}](../bench/results/{plot.name})", ""]
    return "\n".join(lines)


def plots(name: str, stems: set[str]) -> list[Path]:
    """The plots beside a result: ``<name>.png``, then ``<name>-<part>.png`` where
    ``<name>-<part>`` is no result of its own (one plot per model, say)."""
    parts = sorted(p for p in RESULTS.glob(f"{name}-*.png") if p.stem not in stems)
    return [p for p in [RESULTS / f"{name}.png", *parts] if p.exists()]


def _shown(value: object) -> bool:
    return not isinstance(value, (dict, list)) or (
        isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
    )


def render(results: Path = RESULTS) -> str:
    documents = {path.stem: json.loads(path.read_text()) for path in sorted(results.glob("*.json"))}
    order = [n for n in ABOUT if n in documents] + sorted(n for n in documents if n not in ABOUT)
    head = ["# Benchmarks", "",
            "Generated by `python bench/report.py` from `bench/results/*.json`; do not edit by hand.",
            "Each section names the command that produced it and the machine and date it ran on.", ""]
    return "\n".join(head + [section(name, documents[name], set(documents)) for name in order]).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="Only compare; exit 1 when the page is out of date.")
    args = parser.parse_args()
    page = render()
    if args.check:
        if not DOCUMENT.exists() or DOCUMENT.read_text() != page:
            print(f"{DOCUMENT.relative_to(ROOT)} is out of date: run python bench/report.py", file=sys.stderr)
            sys.exit(1)
        return
    DOCUMENT.parent.mkdir(exist_ok=True)
    DOCUMENT.write_text(page)
    print(f"wrote {DOCUMENT.relative_to(ROOT)} from {len(list(RESULTS.glob('*.json')))} result files")


if __name__ == "__main__":
    main()
