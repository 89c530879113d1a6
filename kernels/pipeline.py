"""The compression pipeline: calibrate and compress a decoder layer by layer, GPTQ-style.

For decoder layer ``i`` the pipeline holds the inputs of that layer for every calibration
sequence (``sequences × seq_len × hidden`` floats, the only activation memory it keeps), then

1. runs the layer once with recording hooks on the linears the recipe compresses, collecting
   the statistics their methods need (Hessian, channel magnitudes, sampled rows);
2. replaces those linears with their compressed modules;
3. runs the layer again, now compressed, and its outputs become layer ``i+1``'s inputs.

So each layer is calibrated on the activations the compressed model will actually feed it
(errors of earlier layers included), as GPTQ does. The data-free embedding table is
quantized before layer 0 for the same reason; a table whose method needs calibration (tied
to the output layer, it is calibrated on the output layer's inputs) is done after the last
layer. The model is any :class:`~tierlm.kernels.decoder.CompressibleDecoder` (the edge runtime's
decoder is one), so the artifact holds exactly the modules the edge runtime will run; loading
the model and its calibration text is the edge's job (:mod:`tierlm.edge.compress`).

A rule with a ``rank_budget`` (low-rank stages whose ranks are allocated globally) needs every
matched module's spectrum before any rank is fixed, so such recipes start with a *spectra
pass*: the same layer-by-layer walk, compressing nothing, that decomposes each budgeted
module's weight (or the residual its base leaves) on the uncompressed model's activations and
allocates the ranks (:func:`~tierlm.kernels.lowrank.budget.allocate_ranks`). The compressing
pass then recomputes each decomposition on its own, sequential, activations and truncates it at
the allocated rank; a data-free method (plain SVD) would recompute exactly the same thing, so
its spectra-pass decompositions are kept and reused instead.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from tierlm.kernels.artifact import describe
from tierlm.kernels.calibration import LayerStats, StatsSpec
from tierlm.kernels.composite import CompositeCompressor
from tierlm.kernels.decoder import CompressibleDecoder, set_module
from tierlm.kernels.lowrank.base import Decomposition
from tierlm.kernels.modules import QuantEmbedding, QuantLinear
from tierlm.kernels.quant.base import QuantizedTensor, Quantizer
from tierlm.kernels.recipe import MethodSpec, Recipe, Rule

#: ``progress(layers_done, layers_total, message)``; the total counts decoder layers plus one
#: step for the embedding/output table.
Progress = Callable[[int, int, str], None]


@torch.no_grad()
def compress_model(
    model: CompressibleDecoder, recipe: Recipe, tokens: torch.Tensor, progress: Progress | None = None
) -> list[float]:
    """Compress ``model`` (our decoder, float32) in place following ``recipe``.

    ``tokens``: ``[n, seq_len]`` calibration ids. Returns the seconds spent per decoder layer.
    """
    progress = progress or (lambda done, total, message: None)
    if recipe.mixed_precision is not None:
        raise ValueError("plan the recipe's mixed precision first: compress with plan_mixed_precision(...).recipe(recipe)")
    config = model.config
    if config.tie_word_embeddings and recipe.lm_head is not None:
        raise ValueError("this model ties its output layer to the embedding: put the method under `embedding`")
    cal = recipe.calibration
    spec = StatsSpec.for_needs(recipe.calibration_needs(), max_samples=cal.max_samples)
    n, seq_len = tokens.shape
    batch = min(cal.batch_size, n)
    model.setup_cache(batch, seq_len)
    batches = [tokens[i : i + batch] for i in range(0, n, batch)]
    total = len(model.layers) + 1

    table = recipe.embedding.build() if recipe.embedding is not None else None
    if table is not None and not table.needs:
        _compress_table(model, recipe.embedding, None)
    # A data-free recipe reads no activations: skip the forward passes altogether.
    data_free = not recipe.calibration_needs()
    ranks: dict[str, int] = {}
    reusable: dict[str, tuple[QuantizedTensor | None, Decomposition]] = {}
    if any(rule.rank_budget is not None for rule in recipe.rules):
        ranks, reusable = _budgeted_ranks(model, recipe, [] if data_free else [model.embed(b) for b in batches], spec, progress)
    hidden = [] if data_free else [model.embed(b) for b in batches]

    layer_seconds = []
    for index, layer in enumerate(model.layers):
        start = time.perf_counter()
        progress(index, total, f"layer {index}: calibrating")
        chosen = _chosen_linears(layer, index, recipe)
        stats = _layer_stats(model, index, hidden, chosen, spec, cal.seed)
        progress(index, total, f"layer {index}: compressing {len(chosen)} linears")
        for name, (module, rule) in chosen.items():
            quantizer = rule.build()
            full = f"layers.{index}.{name}"
            if rule.rank_budget is None:
                weight = quantizer.quantize(module.weight.detach(), stats.get(name))
                described = quantizer.config()
            else:
                if full in reusable:
                    weight = quantizer.assemble(*reusable.pop(full), ranks[full])
                else:
                    weight = _budgeted_weight(quantizer, module.weight.detach(), stats.get(name), ranks[full])
                described = {**quantizer.config(), "rank": ranks[full]}
            new = QuantLinear(weight, module.bias)
            new.compression = describe(described)
            set_module(layer, name, new)
        if not data_free:
            hidden = _run_layer(model, index, hidden)
        layer_seconds.append(time.perf_counter() - start)

    output_spec = recipe.lm_head if not config.tie_word_embeddings else recipe.embedding
    output_quantizer = output_spec.build() if output_spec is not None else None
    if output_quantizer is not None and output_quantizer.needs:
        progress(len(model.layers), total, "output layer: calibrating")
        stats = LayerStats(config.hidden_size, spec, seed=cal.seed)
        for x in hidden:
            stats.update(model.norm(x))
        progress(len(model.layers), total, "output layer: compressing")
        if config.tie_word_embeddings:
            _compress_table(model, output_spec, stats)
        else:
            _compress_lm_head(model, output_spec, stats)
    elif output_spec is not None and not config.tie_word_embeddings:
        _compress_lm_head(model, output_spec, None)
    progress(total, total, "done")
    return layer_seconds


def _chosen_linears(layer: nn.Module, index: int, recipe: Recipe) -> dict[str, tuple[nn.Linear, Rule]]:
    """Decoder layer ``index``'s linears that ``recipe`` compresses, by name within the layer."""
    chosen = {}
    for name, module in layer.named_modules():
        rule = recipe.rule_for(f"layers.{index}.{name}")
        if isinstance(module, nn.Linear) and rule is not None:
            chosen[name] = (module, rule)
    return chosen


def _layer_stats(
    model: CompressibleDecoder,
    index: int,
    hidden: list[torch.Tensor],
    chosen: dict[str, tuple[nn.Linear, Rule]],
    spec: StatsSpec,
    seed: int,
) -> dict[str, LayerStats]:
    """Calibration statistics of ``chosen`` over one run of layer ``index`` (none if data-free)."""
    if not any(rule.build().needs for _, rule in chosen.values()):
        return {}
    with _SharedInputRecorder({name: m for name, (m, _) in chosen.items()}, spec, seed) as rec:
        _run_layer(model, index, hidden)
    return rec.stats


def _budgeted_ranks(
    model: CompressibleDecoder, recipe: Recipe, hidden: list[torch.Tensor], spec: StatsSpec, progress: Progress
) -> tuple[dict[str, int], dict[str, tuple[QuantizedTensor | None, Decomposition]]]:
    """The spectra pass (module docstring): ranks per budgeted module, by its full name, and the
    ``(base, decomposition)`` of the data-free ones, which the compressing pass reuses."""
    from tierlm.kernels.lowrank.budget import LayerSpectrum, allocate_ranks

    spectra: dict[int, dict[str, LayerSpectrum]] = {}  # rule index -> module -> spectrum
    reusable: dict[str, tuple[QuantizedTensor | None, Decomposition]] = {}
    total = len(model.layers) + 1
    for index, layer in enumerate(model.layers):
        progress(index, total, f"layer {index}: spectra for the rank budget")
        chosen = {n: (m, r) for n, (m, r) in _chosen_linears(layer, index, recipe).items() if r.rank_budget is not None}
        stats = _layer_stats(model, index, hidden, chosen, spec, recipe.calibration.seed)
        for name, (module, rule) in chosen.items():
            quantizer = rule.build()
            weight = module.weight.detach()
            base = quantizer.base(weight, stats.get(name))
            decomposition = quantizer.decompose_residual(weight, base, stats.get(name))
            spectra.setdefault(recipe.rules.index(rule), {})[f"layers.{index}.{name}"] = LayerSpectrum(
                decomposition.sigma, module.out_features, module.in_features
            )
            if not quantizer.needs:
                reusable[f"layers.{index}.{name}"] = (base, decomposition)
        if hidden:
            hidden = _run_layer(model, index, hidden)
    ranks: dict[str, int] = {}
    for rule_index, layers in spectra.items():
        budget = recipe.rules[rule_index].rank_budget
        assert budget is not None
        dense = sum(s.out_features * s.in_features for s in layers.values())
        ranks.update(allocate_ranks(layers, budget.keep_params * dense, min_rank=budget.min_rank))
    return ranks, reusable


def _budgeted_weight(quantizer: Quantizer, weight: torch.Tensor, stats: LayerStats | None, rank: int) -> QuantizedTensor:
    """A budgeted composite's stored weight: its base plus the residual truncated at ``rank``."""
    assert isinstance(quantizer, CompositeCompressor)
    base = quantizer.base(weight, stats)
    decomposition = quantizer.decompose_residual(weight, base, stats) if rank > 0 else None
    return quantizer.assemble(base, decomposition, rank)


class _SharedInputRecorder:
    """Statistics per linear, computed once per distinct input tensor.

    q/k/v read the same tensor, and so do gate/up: hooks fire in call order, so a linear whose
    input is the very object the previous hooked linear read shares that linear's statistics
    instead of accumulating an identical Hessian (the dominant calibration cost).
    """

    def __init__(self, modules: dict[str, nn.Module], spec: StatsSpec, seed: int) -> None:
        self.modules = modules
        self.stats = {name: LayerStats(int(m.in_features), spec, seed=seed) for name, m in modules.items()}
        self._last: tuple[torch.Tensor, str] | None = None
        self._handles: list[Any] = []

    def _hook(self, name: str, x: torch.Tensor) -> None:
        if self._last is not None and self._last[0] is x:
            self.stats[name] = self.stats[self._last[1]]
            return
        self._last = (x, name)
        self.stats[name].update(x)

    def __enter__(self) -> "_SharedInputRecorder":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(lambda _m, args, n=name: self._hook(n, args[0])))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._last = None


def _run_layer(model: CompressibleDecoder, index: int, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
    """Layer ``index``'s outputs for each batch of its inputs (positions from 0, slots from 0)."""
    layer = model.layers[index]
    outputs = []
    for x in hidden:
        b, t, _ = x.shape
        rope, layout = model.layer_inputs(torch.arange(t).expand(b, t), torch.arange(b))[index]
        outputs.append(layer(x, rope, layout))
    return outputs


def _compress_table(model: CompressibleDecoder, spec: MethodSpec, stats: LayerStats | None) -> None:
    """Quantize the embedding table; a tied output layer then shares the quantized table."""
    quantizer = spec.build()
    emb = model.embed_tokens
    module = QuantEmbedding(quantizer.quantize(emb.weight.detach(), stats), 1.0, emb.padding_idx)
    module.compression = describe(quantizer.config())
    model.embed_tokens = module
    if model.config.tie_word_embeddings:
        model.lm_head = module.tied_output()


def _compress_lm_head(model: CompressibleDecoder, spec: MethodSpec, stats: LayerStats | None) -> None:
    quantizer = spec.build()
    head = model.lm_head
    module = QuantLinear(quantizer.quantize(head.weight.detach(), stats), head.bias)
    module.compression = describe(quantizer.config())
    model.lm_head = module
