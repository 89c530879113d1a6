"""The bits-per-weight frontier plot of bench/compression.py: perplexity against bits per
weight for one model, our recipes and llama.cpp's types, each side's Pareto frontier as a step
line, fp32 as a reference line, and the caveat the source GGUF imposes written under the axes."""

from __future__ import annotations

from pathlib import Path

# Our recipes by family (the name's first dash-separated part), one colour each.
FAMILY_COLOURS = {
    "rtn": "#9e9e9e",
    "gptq": "#1f77b4",
    "awq": "#17becf",
    "nf4": "#8c564b",
    "w8a8": "#7f7f7f",
    "grid": "#2ca02c",
    "mixed": "#d62728",
    "composite": "#9467bd",
}
LLAMA_CPP = "#ff7f0e"


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other beats on both axes (fewer bits and lower perplexity), by bits."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def plot_frontier(path: Path, model: str, rows: list[dict], caveat: str, max_ppl_ratio: float = 3.0) -> Path:
    """Write ``path`` (PNG). Rows above ``max_ppl_ratio`` × fp32 perplexity are listed in the
    legend text but not drawn, so that broken settings do not flatten the interesting range."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fp32 = next(r for r in rows if r["name"] == "fp32")
    fig = Figure(figsize=(9, 6.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.09, 0.24, 0.62, 0.68))
    ceiling = fp32["ppl"] * max_ppl_ratio
    off_chart = []
    sides: dict[str, list[tuple[float, float]]] = {"ours": [], "llama.cpp": []}
    for row in rows:
        if row["name"] == "fp32":
            continue
        llama = row["name"].startswith("llama.cpp-")
        if row["ppl"] > ceiling:
            off_chart.append(f"{row['name']}: {row['ppl']:.3g}")
            continue
        x, y = row["bits_per_weight"], row["ppl"]
        sides["llama.cpp" if llama else "ours"].append((x, y))
        colour = LLAMA_CPP if llama else FAMILY_COLOURS.get(row["name"].split("-")[0], "#bcbd22")
        ax.scatter([x], [y], s=22, color=colour, marker="s" if llama else "o", zorder=3)
        label = row["name"].removeprefix("llama.cpp-")
        ax.annotate(label, (x, y), fontsize=6.5, xytext=(3, 2), textcoords="offset points", color=colour)
    for side, colour in (("ours", FAMILY_COLOURS["mixed"]), ("llama.cpp", LLAMA_CPP)):
        front = pareto(sides[side])
        if front:
            xs, ys = zip(*front)
            ax.step(xs, ys, where="post", color=colour, alpha=0.6, label=f"{side} frontier")
    ax.axhline(fp32["ppl"], color="black", linestyle="--", linewidth=0.8, label=f"fp32 ({fp32['ppl']:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (all stored weight bytes × 8 / parameters)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(f"{model}: perplexity vs bits per weight")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper right", fontsize=8)
    legend = fig.add_axes((0.73, 0.24, 0.26, 0.68))
    legend.axis("off")
    families = "\n".join(f"● {family}" for family in FAMILY_COLOURS) + "\n■ llama.cpp"
    legend.text(0, 1, families, va="top", fontsize=8)
    if off_chart:
        legend.text(0, 0.45, "off the chart:\n" + "\n".join(off_chart), va="top", fontsize=6.5)
    fig.text(0.02, 0.02, caveat, fontsize=7, wrap=True, va="bottom")
    fig.savefig(path)
    return path
