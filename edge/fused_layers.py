"""Each decoder layer's work after attention as one onnxruntime run.

A compressed model's block linears run as onnxruntime graphs (``tierlm.kernels.ops.ort_nbits``),
and a decode step calls them many times on one row: Gemma 3 270M's 18 layers made 72 runs of
about 1.4 MB of weights each. Every run costs a fixed entry (onnxruntime's own, and, compiled,
torch's dispatch to it) and starts its workers cold. On this CPU, 72 bare runs of those int8
weights took 7.1 ms where one graph holding all 72 products took 5.7 ms (a probe), before the
~20 µs of dispatch each run adds in a compiled step.

So where a layer's output projection and MLP products all run whole in onnxruntime
(:attr:`~tierlm.kernels.ops.ort_nbits.OrtKernel.composable`), :func:`fuse_tail` builds one graph
for the rest of the layer after attention: the output projection, the norms and residual adds
around it (Gemma's sandwich norms or Llama's pre-norm), the gated MLP, and the next layer's
input norm and q/k/v. A step then makes one run per layer (and the first layer's q/k/v). The
layers' modules keep their names and weights; only their kernels go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tierlm.kernels.modules import QuantLinear
from tierlm.kernels.ops.ort_nbits import GraphPart, OrtGraph, OrtKernel

if TYPE_CHECKING:  # the decoder imports this module, not the reverse
    from tierlm.edge.decoder import DecoderLayer, RMSNorm


class LayerTail:
    """``(attention output before o_proj, the layer's input) -> (the layer's output, the next
    layer's q/k/v or None)`` in one run. A runtime view, like
    :class:`~tierlm.kernels.modules.FusedLinears`: state dicts never see it."""

    def __init__(self, kernel: OrtGraph, attn_width: int, hidden: int, next_sizes: list[int] | None) -> None:
        self.kernel = kernel
        self.attn_width, self.hidden = attn_width, hidden
        self.next_sizes = next_sizes  # the next layer's q, k, v widths when this graph computes them

    def __call__(self, attn: Tensor, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        # The graph takes one input and gives one output (the compiled step calls it as one
        # custom op): the inputs side by side, then the outputs.
        joined = torch.cat([attn.reshape(-1, self.attn_width), x.reshape(-1, self.hidden)], dim=-1)
        y = self.kernel(joined).reshape(*x.shape[:-1], -1).to(x.dtype)
        if self.next_sizes is None:
            return y, None
        out, qkv = y.split([self.hidden, sum(self.next_sizes)], dim=-1)
        return out, qkv.split(self.next_sizes, dim=-1)


def fuse_tail(layer: DecoderLayer, following: DecoderLayer | None = None) -> LayerTail | None:
    """The tail of ``layer`` (its projections fused already: ``mlp.gate_up`` set) as one graph,
    or None where a product cannot join it (:func:`can_fuse_tail`). With ``following``, the
    next layer, the graph also computes that layer's input norm and q/k/v where its joined
    projection can join and its own tail can be fused (it then takes them from this one): one
    run per layer, not two."""
    if not can_fuse_tail(layer):
        return None
    attn, mlp = layer.self_attn, layer.mlp
    linears = [attn.o_proj, mlp.gate_up.linear, mlp.down_proj]
    chained = (
        following is not None
        and can_fuse_tail(following)
        and _composable(following.self_attn.qkv and following.self_attn.qkv.linear)
    )
    if chained:
        linears.append(following.self_attn.qkv.linear)
    # The kernels themselves, not the modules: these build the graph's parts after the
    # modules have let them go (a session for more threads is built when first needed).
    kernels = [m.home_kernel for m in linears]
    o_proj, joined, down = kernels[:3]
    next_qkv = kernels[3] if chained else None
    hidden, attn_width, intermediate = o_proj.n, o_proj.k, down.k
    sandwich = layer.sandwich

    def part() -> GraphPart:
        out = "x_out" if chained else "Y"
        nodes = [_node("Split", ["A", "halves"], ["attn", "x"], axis=1)]
        inits = [_int64("halves", [attn_width, hidden])]
        parts = [o_proj.graph_part("o_", "attn", "o")]
        if sandwich:  # x2 = x + norm(o); out = x2 + norm(mlp(norm(x2)))
            parts += [
                _rms_norm(layer.post_attention_layernorm, "post_attn_", "o", "o_normed"),
                _add("x", "o_normed", "x2"),
                _rms_norm(layer.pre_feedforward_layernorm, "pre_mlp_", "x2", "mlp_in"),
                _mlp(joined, down, intermediate, mlp.gelu, "mlp_in", "mlp_out"),
                _rms_norm(layer.post_feedforward_layernorm, "post_mlp_", "mlp_out", "mlp_normed"),
                _add("x2", "mlp_normed", out),
            ]
        else:  # x2 = x + o; out = x2 + mlp(norm(x2))
            parts += [
                _add("x", "o", "x2"),
                _rms_norm(layer.post_attention_layernorm, "pre_mlp_", "x2", "mlp_in"),
                _mlp(joined, down, intermediate, mlp.gelu, "mlp_in", "mlp_out"),
                _add("x2", "mlp_out", out),
            ]
        if chained:  # Y = [out, qkv_next(norm_next(out))]
            parts += [
                _rms_norm(following.input_layernorm, "next_in_", out, "next_in"),
                next_qkv.graph_part("next_qkv_", "next_in", "next_qkv"),
                GraphPart([_node("Concat", [out, "next_qkv"], ["Y"], axis=1)], []),
            ]
        for p in parts:
            nodes += p.nodes
            inits += p.initializers
        return GraphPart(nodes, inits)

    next_sizes = following.self_attn.qkv.sizes if chained else None
    out_width = hidden + (sum(next_sizes) if chained else 0)
    weights = sum(m.in_features * m.out_features for m in linears)
    tail = LayerTail(OrtGraph(part, attn_width + hidden, out_width, weights), attn_width, hidden, next_sizes)
    for module, kernel in zip(linears, kernels):
        kernel.release_sessions()
        module.release_kernels()
    return tail


def can_fuse_tail(layer: DecoderLayer) -> bool:
    """Whether ``layer``'s o_proj, joined gate/up and down products all run whole in onnxruntime
    (quantized, no biases, nothing computed in torch around them)."""
    gate_up = layer.mlp.gate_up
    linears = (layer.self_attn.o_proj, gate_up and gate_up.linear, layer.mlp.down_proj)
    return gate_up is not None and len(set(gate_up.sizes)) == 1 and all(_composable(m) for m in linears)


def _composable(linear: object) -> bool:
    """Whether ``linear`` is a quantized linear without bias whose kernel can join a graph."""
    return (
        isinstance(linear, QuantLinear)
        and linear.bias is None
        and isinstance(linear.home_kernel, OrtKernel)
        and linear.home_kernel.composable
    )


def _mlp(gate_up: OrtKernel, down: OrtKernel, intermediate: int, gelu: bool, x: str, y: str) -> GraphPart:
    """``down(act(gate(x)) * up(x))`` from the joined gate/up product; ``gelu``: the tanh
    approximation (onnxruntime's FastGelu), else SiLU."""
    joined, lower = gate_up.graph_part("gate_up_", x, "gate_up"), down.graph_part("down_", "hidden", y)
    if gelu:
        act = [_node("FastGelu", ["gate"], ["act"], domain="com.microsoft")]
    else:
        act = [_node("Sigmoid", ["gate"], ["sigmoid"]), _node("Mul", ["gate", "sigmoid"], ["act"])]
    nodes = [
        *joined.nodes,
        _node("Split", ["gate_up", "mlp_halves"], ["gate", "up"], axis=1),
        *act,
        _node("Mul", ["act", "up"], ["hidden"]),
        *lower.nodes,
    ]
    halves = _int64("mlp_halves", [intermediate, intermediate])
    return GraphPart(nodes, [*joined.initializers, halves, *lower.initializers])


def _rms_norm(norm: RMSNorm, prefix: str, x: str, y: str) -> GraphPart:
    """The norm as onnxruntime's SimplifiedLayerNormalization (RMSNorm) over the last axis."""
    from onnx import TensorProto, helper

    weight = (1.0 + norm.weight if norm.unit_offset else norm.weight).detach().float()
    scale = helper.make_tensor(prefix + "scale", TensorProto.FLOAT, [len(weight)], weight.numpy().tobytes(), raw=True)
    node = _node("SimplifiedLayerNormalization", [x, prefix + "scale"], [y], epsilon=norm.eps, axis=-1)
    return GraphPart([node], [scale])


def _add(a: str, b: str, y: str) -> GraphPart:
    return GraphPart([_node("Add", [a, b], [y])], [])


def _node(op: str, inputs: list[str], outputs: list[str], **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, outputs, **attrs)


def _int64(name: str, values: list[int]):
    from onnx import TensorProto, helper

    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
