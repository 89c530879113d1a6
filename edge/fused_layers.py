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
around it (Gemma's sandwich norms or Llama's pre-norm), and the gated MLP. A step then makes two
runs per layer, q/k/v and this one. The layer's modules keep their names and weights; only their
kernels go.
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
    """``(attention output before o_proj, the layer's input) -> the layer's output`` in one run.
    A runtime view, like :class:`~tierlm.kernels.modules.FusedLinears`: state dicts never see it."""

    def __init__(self, kernel: OrtGraph, attn_width: int, hidden: int) -> None:
        self.kernel = kernel
        self.attn_width, self.hidden = attn_width, hidden

    def __call__(self, attn: Tensor, x: Tensor) -> Tensor:
        # The graph takes one input (the compiled step calls it as one custom op): both, side by side.
        joined = torch.cat([attn.reshape(-1, self.attn_width), x.reshape(-1, self.hidden)], dim=-1)
        return self.kernel(joined).reshape(x.shape).to(x.dtype)


def fuse_tail(layer: DecoderLayer) -> LayerTail | None:
    """The tail of ``layer`` (its projections fused already: ``mlp.gate_up`` set) as one graph,
    or None where a product cannot join it: not quantized, a bias, or work in torch around it."""
    attn, mlp = layer.self_attn, layer.mlp
    gate_up = mlp.gate_up
    linears = (attn.o_proj, None if gate_up is None else gate_up.linear, mlp.down_proj)
    if not all(isinstance(m, QuantLinear) and m.bias is None for m in linears):
        return None
    o_proj, joined, down = (m.home_kernel for m in linears)
    if not all(isinstance(k, OrtKernel) and k.composable for k in (o_proj, joined, down)):
        return None
    hidden, attn_width, intermediate = o_proj.n, o_proj.k, down.k
    sandwich = layer.sandwich

    def part() -> GraphPart:
        halves = _int64("halves", [attn_width, hidden])
        nodes = [_node("Split", ["A", "halves"], ["attn", "x"], axis=1)]
        inits = [halves]
        parts = [o_proj.graph_part("o_", "attn", "o")]
        if sandwich:  # x2 = x + norm(o); y = x2 + norm(mlp(norm(x2)))
            parts += [
                _rms_norm(layer.post_attention_layernorm, "post_attn_", "o", "o_normed"),
                _add("x", "o_normed", "x2"),
                _rms_norm(layer.pre_feedforward_layernorm, "pre_mlp_", "x2", "mlp_in"),
                _mlp(joined, down, intermediate, mlp.gelu, "mlp_in", "mlp_out"),
                _rms_norm(layer.post_feedforward_layernorm, "post_mlp_", "mlp_out", "mlp_normed"),
                _add("x2", "mlp_normed", "Y"),
            ]
        else:  # x2 = x + o; y = x2 + mlp(norm(x2))
            parts += [
                _add("x", "o", "x2"),
                _rms_norm(layer.post_attention_layernorm, "pre_mlp_", "x2", "mlp_in"),
                _mlp(joined, down, intermediate, mlp.gelu, "mlp_in", "mlp_out"),
                _add("x2", "mlp_out", "Y"),
            ]
        for p in parts:
            nodes += p.nodes
            inits += p.initializers
        return GraphPart(nodes, inits)

    weights = hidden * attn_width + 3 * hidden * intermediate
    tail = LayerTail(OrtGraph(part, attn_width + hidden, hidden, weights), attn_width, hidden)
    for module in linears:
        module.release_kernels()
    return tail


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
