"""Mixed precision: a format per tensor under a byte budget, priced by the loss's sensitivity.

llama.cpp's k-quant mixes choose by hand which tensors get more bits (Q4_K_M: ``attn_v`` and
half of ``ffn_down`` at 6 bits, the output layer at 6 or 8). Here the model prices its own
tensors, and the budget is spent where it buys the most loss:

1. **Sensitivity.** The diagonal empirical Fisher ``F = E[g ⊙ g]`` of the calibration loss
   (next-token cross-entropy) with respect to every weight, from one backward pass per
   calibration sequence. Replacing ``W`` by ``Q(W)`` then raises the loss by about
   ``½ Σ F ⊙ (Q(W) − W)²`` (a second-order expansion around a trained minimum, where the
   gradient's mean is ~0; HAWQ-V2 and SqueezeLLM rank layers and weights this way).
2. **Prices.** Each tensor is quantized with each candidate's data-free twin (the candidate
   itself when it needs no calibration, else round-to-nearest on its grid, whose storage is the
   same) for the exact stored bytes and the estimated loss. The embedding table (tied to the
   output layer in both our models, 62% of Gemma 3 270M's weights) is one tensor with its own
   candidates.
3. **Allocation.** Minimise the summed estimated loss subject to the bytes: a multiple-choice
   knapsack, solved greedily on each tensor's lower convex hull of (bytes, loss): start every
   tensor at its cheapest candidate, take upgrades in order of loss saved per byte while they
   fit, then spend what is left on the best single moves to any option.

The result is a plain recipe with one rule per module (:meth:`MixedPlan.recipe`), so the
pipeline compresses with the real methods (GPTQ's error feedback included) and the artifact's
manifest says which tensor got what, with its estimate.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tierlm.kernels.decoder import CompressibleDecoder
from tierlm.kernels.methods import data_free_twin

if TYPE_CHECKING:
    from tierlm.kernels.recipe import MethodSpec, MixedPrecision, Recipe

#: The embedding table's name in a plan (it is not a decoder-block linear).
TABLE = "embed_tokens"


@dataclass(frozen=True)
class Option:
    """One candidate for one tensor: its index in the candidate list, bytes and estimated loss."""

    candidate: int
    nbytes: int
    loss: float


@dataclass
class MixedPlan:
    """The chosen candidate per tensor and what the allocation expected of it."""

    choices: dict[str, Option]
    candidates: dict[str, list[MethodSpec]]  # per tensor: the list its Option.candidate indexes
    budget_bytes: int
    fixed_bytes: int  # what the plan does not decide (norms, skipped modules)
    params: int
    notes: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return self.fixed_bytes + sum(o.nbytes for o in self.choices.values())

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.params

    def spec(self, name: str) -> MethodSpec:
        return self.candidates[name][self.choices[name].candidate]

    def recipe(self, recipe: Recipe) -> Recipe:
        """``recipe`` with one rule per planned module and the planned table method."""
        from tierlm.kernels.recipe import Rule

        rules = [
            Rule(match=[name], method=self.spec(name).method, options=dict(self.spec(name).options))
            for name in self.choices
            if name != TABLE
        ]
        return recipe.model_copy(update={"rules": rules, "embedding": self.spec(TABLE), "mixed_precision": None})

    def summary(self) -> dict[str, Any]:
        """JSON-able: the totals, and per tensor the method, bytes and estimated loss increase."""
        return {
            "budget_bytes": self.budget_bytes,
            "bytes": self.nbytes,
            "bits_per_weight": round(self.bits_per_weight, 4),
            "estimated_loss_increase": sum(o.loss for o in self.choices.values()),
            "modules": {
                name: {**self.spec(name).model_dump(), "bytes": o.nbytes, "estimated_loss_increase": o.loss}
                for name, o in self.choices.items()
            },
            "notes": self.notes,
        }


def fisher_diagonals(model: CompressibleDecoder, tokens: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """``E[g ⊙ g]`` of the next-token loss for the weights of the modules ``names`` (``TABLE``
    for the embedding table, which a tied output layer shares), one sequence of ``tokens`` at a
    time (the empirical Fisher over sequences)."""
    weights = {name: _weight(model, name) for name in names}
    previous = {p: p.requires_grad for p in model.parameters()}
    fisher = {name: torch.zeros_like(w) for name, w in weights.items()}
    n, seq_len = tokens.shape
    try:
        for p in previous:
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        with torch.enable_grad():
            for row in tokens:
                # A fresh cache per sequence: its writes are part of the graph being differentiated.
                model.setup_cache(1, seq_len)
                ids = row[None]
                x = model.embed(ids)
                for layer, (rope, layout) in zip(model.layers, model.layer_inputs(torch.arange(seq_len)[None], torch.tensor([0]))):
                    x = layer(x, rope, layout)
                logits = model.head(x[:, :-1])
                loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[0, 1:])
                for name, g in zip(weights, torch.autograd.grad(loss, list(weights.values()))):
                    fisher[name] += g.pow(2) / n
    finally:
        for p, flag in previous.items():
            p.requires_grad_(flag)
    return fisher


def price(
    weight: torch.Tensor, fisher: torch.Tensor, candidates: list[MethodSpec]
) -> list[Option]:
    """Bytes and estimated loss increase of each candidate for one weight."""
    options = []
    for i, spec in enumerate(candidates):
        qt = data_free_twin(spec.build()).quantize(weight.detach())
        error = (qt.dequantize() - weight.detach()).pow(2)
        options.append(Option(i, qt.nbytes, float(0.5 * (fisher * error).sum())))
    return options


def allocate(prices: dict[str, list[Option]], budget: int) -> dict[str, Option]:
    """The option per tensor with the least summed loss within ``budget`` bytes (greedy on
    each tensor's lower convex hull; see the module docstring)."""
    hulls = {name: _lower_hull(options) for name, options in prices.items()}
    chosen = {name: hull[0] for name, hull in hulls.items()}
    spent = sum(o.nbytes for o in chosen.values())
    if spent > budget:
        raise ValueError(f"the cheapest candidates take {spent} bytes, over the budget of {budget}")
    step = {name: 0 for name in hulls}
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        hull, i = hulls[name], step[name]
        if i + 1 < len(hull):
            a, b = hull[i], hull[i + 1]
            heapq.heappush(heap, (-(a.loss - b.loss) / (b.nbytes - a.nbytes), name))

    for name in hulls:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        hull, i = hulls[name], step[name]
        extra = hull[i + 1].nbytes - hull[i].nbytes
        if spent + extra <= budget:
            spent += extra
            step[name] = i + 1
            chosen[name] = hull[i + 1]
            push(name)
    # What the hull steps leave unspent may still buy an option off the hulls.
    while True:
        moves = [
            (chosen[name].loss - o.loss, name, o)
            for name, options in prices.items()
            for o in options
            if o.loss < chosen[name].loss and spent + o.nbytes - chosen[name].nbytes <= budget
        ]
        if not moves:
            return chosen
        _, name, option = max(moves, key=lambda move: move[0])
        spent += option.nbytes - chosen[name].nbytes
        chosen[name] = option


def _lower_hull(options: list[Option]) -> list[Option]:
    """Options by bytes, keeping only those on the lower convex hull of (bytes, loss)."""
    hull: list[Option] = []
    for o in sorted(options, key=lambda o: (o.nbytes, o.loss)):
        if hull and o.loss >= hull[-1].loss:
            continue  # more bytes for no less loss
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], o) <= 0:
            hull.pop()
        hull.append(o)
    return hull


def _cross(a: Option, b: Option, c: Option) -> float:
    """> 0 when b lies below the segment a-c (a strictly convex turn)."""
    return (b.nbytes - a.nbytes) * (c.loss - a.loss) - (b.loss - a.loss) * (c.nbytes - a.nbytes)


def plan_mixed_precision(
    model: CompressibleDecoder, recipe: Recipe, tokens: torch.Tensor, progress=None
) -> MixedPlan:
    """The per-tensor formats for ``recipe.mixed_precision`` (see the module docstring)."""
    from tierlm.kernels.recipe import is_skipped

    spec: MixedPrecision = recipe.mixed_precision
    progress = progress or (lambda message: None)
    if not model.config.tie_word_embeddings:
        raise ValueError("mixed precision plans a tied embedding/output table; this model's output layer is separate")
    linears = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith("layers.") and not is_skipped(recipe, name)
    ]
    names = linears + [TABLE]
    params = parameter_count(model)
    planned = sum(_weight(model, n).numel() for n in names)
    fixed = sum(t.numel() * t.element_size() for t in _stored_tensors(model, names))
    budget = int(spec.bits_per_weight * params / 8)
    progress(f"sensitivity: Fisher over {min(spec.sequences, tokens.shape[0])} sequences")
    fisher = fisher_diagonals(model, tokens[: spec.sequences, : spec.seq_len], names)
    prices = {}
    candidates = {}
    for name in names:
        candidates[name] = list(spec.table_candidates or spec.candidates) if name == TABLE else list(spec.candidates)
        progress(f"pricing {name}")
        prices[name] = price(_weight(model, name), fisher[name], candidates[name])
    choices = allocate(prices, budget - fixed)
    plan = MixedPlan(choices, candidates, budget, fixed, params)
    plan.notes.append(f"{planned} of {params} weights planned; {fixed} bytes fixed (norms, skipped modules)")
    return plan


def _weight(model: CompressibleDecoder, name: str) -> torch.Tensor:
    return model.embed_tokens.weight if name == TABLE else model.get_submodule(name).weight


def parameter_count(model: nn.Module) -> int:
    """Distinct weights (a tied table once), as bits per weight counts them."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _stored_tensors(model: nn.Module, planned: list[str]) -> list[torch.Tensor]:
    """The float tensors the plan leaves as they are (everything but the planned weights)."""
    skip = {id(_weight(model, n)) for n in planned}
    return [p for p in {id(p): p for p in model.parameters()}.values() if id(p) not in skip]
