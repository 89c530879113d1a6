"""Int3/int4 group-wise matmuls through onnxruntime's ``MatMulNBits`` contrib op, and int8
per-row ones through ``MatMulInteger`` (MLAS kernels).

Measured (bench/results/kernels_matmul.json, one thread, 2-core AVX2 AMD EPYC): on Gemma 3
270M's 262k-row output layer, which no cache holds, int4 runs 6.4x and int8 4.7x faster than
fp32 at one row; a block weight timed alone stays cached, and there fp32 is as fast at one row
(a decode step reads each weight from memory: bench/edge_step.py). torch's own CPU int8 and int4
kernels were slower than fp32 on that machine. ``accuracy_level`` 4 lets MLAS quantize the
activations to int8 per block and use integer dot products; level 0 keeps float activations
(slower, closer to the reference). One small ONNX graph and session per weight,
with the weight baked in as an initializer (ORT prepacks it at session start).

A low-rank correction ``(x · Rᵀ) · Lᵀ`` (the composite's) can be added inside the same graph,
so a composite layer is one session run rather than three torch products and a sum. A decoder
layer's products and the work between them can share one graph too (:class:`OrtGraph`).

Layout mapping: B is ``[N, K/block, block/2]`` uint8, low nibble = even input index, which is
the GPTQ ``qweight`` transposed and read as bytes; int3 codes are widened to 4 bits (the grid
is the same, so results are identical) because ORT has no 3-bit CPU kernel. Act-order weights
(``g_idx``) are permuted so groups are contiguous, and the input columns permuted to match.

W8A8 weights (:class:`Int8MatMulInteger`) run as ``MatMulInteger`` on int8 activations per
token, quantized inside the graph: the numerics of :meth:`Int8Tensor.linear_reference` and of
``torch._int_mm``'s kernel, with exact integer sums, so a row's result never depends on the
rows batched with it. Against 8-bit ``MatMulNBits`` (int8 activations per block of 32 inputs,
which this module used before) it took the same time at one row and half at eight: MLAS's
block kernel works two rows at a time and unpacks the weights again for every pair (Gemma 3
270M's 262k-row int8 output layer: 7.8 vs 7.5 ms at one row, 17.1 vs 32.5 ms at eight, on two
threads, in a probe), so decode batches of several streams paid for it. Per-token activations
are coarser: Gemma 3 270M W8A8's perplexity rose from +0.6% to +3.0% against fp32 (in a probe,
per-token activations in the blocks alone gave +2.8%, in the output layer alone +0.9%;
bench/results/compression.json has the current value).

Threads: a session's intra-op pool wakes its workers for every run; for a small weight at
batch 1 that hand-off costs more than the second core gives back (Gemma 3 270M's block
linears measured 10-30% slower on two threads than on one), so a weight below
:data:`PARALLEL_MIN_WEIGHTS` runs single-threaded up to :data:`SERIAL_MAX_ROWS` rows, and on
every thread for a prefill chunk (a second session, built when first needed); big weights (the
262k-row output layer) use every thread always. :func:`share_pool` replaces all of that with
one process-wide pool whose workers stay awake between runs (an engine's choice, see
``tierlm.edge.threads``).

Under ``torch.compile`` a run is the custom op ``tierlm::matmul_nbits`` (the sessions found by a
handle), so a compiled decode step keeps its weights' matmuls in one graph with the elementwise
work around them instead of breaking the graph at every linear; eager calls skip the op's
dispatch and run the session directly.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from tierlm.kernels.ops.int8_mm import QMAX
from tierlm.kernels.packing import int4_words_to_bytes

if TYPE_CHECKING:  # a format owns its kernels (QuantizedTensor.kernel), never the reverse
    from tierlm.kernels.lowrank.tensor import LowRankTensor
    from tierlm.kernels.quant.group import GroupQuantTensor
    from tierlm.kernels.quant.int8 import Int8Tensor

ORT_BLOCK_SIZES = (16, 32, 64, 128, 256)
#: Weights (N·K) from which a session gets all of torch's threads at any batch.
PARALLEL_MIN_WEIGHTS = 8 * 1024 * 1024
#: Rows up to which a smaller weight runs on one thread (decode steps); more rows (a prefill
#: chunk) have enough work for every thread.
SERIAL_MAX_ROWS = 8


def ort_available() -> bool:
    """Whether onnxruntime and onnx (used to build the one-node graph) import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# Every live `_Sessions` by handle: a custom op's arguments are tensors and numbers, so a
# compiled graph names its weight by handle. Weak, so an unloaded model's sessions still go.
_BY_HANDLE: weakref.WeakValueDictionary[int, _Sessions] = weakref.WeakValueDictionary()
_HANDLES = itertools.count()
# The process-wide pool's size once `share_pool` was called; None: every session has its own.
_shared_pool_threads: int | None = None


def share_pool(threads: int) -> None:
    """Build every later session on one process-wide pool of ``threads`` threads, whose workers
    spin between runs, instead of a pool of its own whose workers sleep.

    A decode step makes many small runs back to back (~20 with fused layers, 73 without). A
    worker that sleeps between them costs a wake-up per run, which is why a small weight runs on one thread in a pool of its
    own; workers that spin in a pool per session would be one busy thread per weight. One shared
    pool keeps a single worker awake for all of them. Its spinning holds the other cores between
    runs, so the caller's own torch ops should then run on one thread.

    Once per process, with one size: onnxruntime cannot resize its pool. And once it exists,
    onnxruntime refuses every session in the process that asks for a pool of its own, so the
    sessions of this module built later share it whatever thread count they were given.
    """
    global _shared_pool_threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if _shared_pool_threads == threads:
        return
    if _shared_pool_threads is not None:
        raise RuntimeError(
            f"onnxruntime's shared pool already has {_shared_pool_threads} threads and cannot be resized;"
            f" run the engines of one process on one thread count (asked for {threads})"
        )
    from onnxruntime.capi._pybind_state import set_global_thread_pool_sizes

    set_global_thread_pool_sizes(threads, 1)
    _shared_pool_threads = threads


# Registered with torch.library's low-level API, a CPU kernel and a fake, rather than
# `torch.library.custom_op`: a compiled decode step calls this op ~20-70 times, and custom_op's
# Python layers (autograd wrapping, argument checks) cost ~16 µs more per call under
# inference_mode (47 vs 31 µs for a 64 x 64 weight inside a compiled graph, measured on this
# CPU), 0.3-1 ms per step. Nothing differentiates through it.
_LIB = torch.library.Library("tierlm", "DEF")
_LIB.define("matmul_nbits(Tensor a, int handle) -> Tensor")


def matmul_nbits(a: torch.Tensor, handle: int) -> torch.Tensor:
    """``a [M, K] float32 -> [M, N] float32`` through the sessions registered as ``handle``."""
    return _BY_HANDLE[handle].run_now(a)


def _matmul_nbits_fake(a: torch.Tensor, handle: int) -> torch.Tensor:
    return a.new_empty((a.shape[0], _BY_HANDLE[handle].n))


_LIB.impl("matmul_nbits", matmul_nbits, "CPU")
torch.library.register_fake("tierlm::matmul_nbits", _matmul_nbits_fake, lib=_LIB)


class _Sessions:
    """One ``MatMulNBits`` graph run by a session per thread count: a weight below
    :data:`PARALLEL_MIN_WEIGHTS` gets one thread at decode's few rows and every thread for a
    prefill chunk, a bigger one every thread always (module docstring). The decode session is
    built at once, a prefill one the first time a call needs it, from ``build(threads)``, where
    ``threads`` None means the shared pool (:func:`share_pool`; then one session serves all rows).
    ``n``: the graph's output width; ``weights``: how many weights its products read."""

    def __init__(self, build, n: int, weights: int, num_threads: int | None) -> None:
        self._build = build
        self._fixed = num_threads
        self.shared = _shared_pool_threads is not None  # onnxruntime then allows no other pool
        self._max = torch.get_num_threads()
        self._small = weights < PARALLEL_MIN_WEIGHTS
        self._by_threads: dict[int | None, object] = {}
        self.n = n
        self.handle = next(_HANDLES)
        _BY_HANDLE[self.handle] = self
        self.for_rows(1)

    def for_rows(self, rows: int):
        if self.shared:
            threads = None
        else:
            threads = self._fixed or (1 if self._small and rows <= SERIAL_MAX_ROWS else self._max)
        if threads not in self._by_threads:
            self._by_threads[threads] = self._build(threads)
        return self._by_threads[threads]

    def clear(self) -> None:
        """Drop the built sessions; the next run builds the one it needs again."""
        self._by_threads.clear()

    def run(self, a: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return torch.ops.tierlm.matmul_nbits(a, self.handle)
        return self.run_now(a)

    def run_now(self, a: torch.Tensor) -> torch.Tensor:
        # A plain run (ORT allocates Y) measured ~10 µs faster per call than binding our own
        # output buffer: building an IOBinding per call costs more than the allocation.
        (y,) = self.for_rows(a.shape[0]).run(None, {"A": a.contiguous().numpy()})
        return torch.from_numpy(y)


class OrtKernel:
    """A kernel that runs an onnxruntime graph ``[M, k] -> [M, n]`` (:class:`NBitsMatMul`,
    :class:`Int8MatMulInteger`, :class:`OrtGraph`)."""

    _sessions: _Sessions
    n: int
    k: int

    @property
    def on_shared_pool(self) -> bool:
        """Whether this kernel runs on the pool of :func:`share_pool`."""
        return self._sessions.shared

    def release_sessions(self) -> None:
        """Drop this kernel's sessions and the packed weights they hold: for a kernel whose
        product a larger graph runs now (:class:`OrtGraph`), which may still build its parts."""
        self._sessions.clear()

    @property
    def composable(self) -> bool:
        """Whether :meth:`graph_part` can place this product in a larger graph: False when it
        needs work in torch around its session (input scales, permutations, outliers)."""
        return False

    def graph_part(self, prefix: str, x: str, y: str) -> GraphPart:
        """This kernel's product ``x -> y`` as nodes of a larger graph, names starting with
        ``prefix`` (only when :attr:`composable`)."""
        raise NotImplementedError

    def _session(self, threads: int | None):
        """A session of this kernel's product alone on ``threads`` threads (None: the shared pool)."""
        return _build_session(self.graph_part("", "A", "Y"), self.k, self.n, threads)


class GraphPart(NamedTuple):
    """Nodes and initializers of a piece of an onnx graph (onnx ``NodeProto``s, ``TensorProto``s)."""

    nodes: list
    initializers: list


class NBitsMatMul(OrtKernel):
    """``x [M, K] float -> [M, N] float32`` for a :class:`GroupQuantTensor`, plus an optional
    low-rank term ``(x · Rᵀ) · Lᵀ`` computed in the same session."""

    def __init__(
        self,
        qt: GroupQuantTensor,
        num_threads: int | None = None,
        accuracy_level: int = 4,
        lowrank: LowRankTensor | None = None,
    ) -> None:
        if qt.group_size not in ORT_BLOCK_SIZES:
            raise ValueError(f"MatMulNBits needs group_size in {ORT_BLOCK_SIZES}, got {qt.group_size}")
        n, k = qt.shape
        if lowrank is not None and (lowrank.shape != (n, k) or qt.input_scale is not None or qt.g_idx is not None):
            # The correction reads the layer's own input; AWQ scales and act-order permute it.
            raise ValueError("a low-rank term joins only a same-shape weight without input scales or act-order")
        self.qt, self.lowrank, self.accuracy_level = qt, lowrank, accuracy_level
        self.perm: torch.Tensor | None = None
        if qt.g_idx is not None:
            perm = torch.argsort(qt.g_idx.to(torch.int64), stable=True)
            if not torch.equal(qt.g_idx[perm].to(torch.int64), torch.arange(k) // qt.group_size):
                raise ValueError("g_idx groups are not of size group_size; cannot make them contiguous")
            self.perm = perm
        self.input_scale = qt.input_scale
        self.n, self.k = n, k
        self._sessions = _Sessions(self._session, n, n * k, num_threads)

    @property
    def composable(self) -> bool:
        # AWQ's input scales and act-order's permutation run in torch before the session.
        return self.input_scale is None and self.perm is None

    def graph_part(self, prefix: str, x: str, y: str) -> GraphPart:
        """The product's nodes, its initializers made from the tensor."""
        qt, (n, k) = self.qt, self.qt.shape
        nb = k // qt.group_size
        scales = qt.scales.to(torch.float32)
        zeros = qt.zeros()
        if qt.mins is not None:
            # A float zero point z runs as the nearest code zᵣ plus a per-group offset (zᵣ - z)·s,
            # added as Σ_group(x)·offset: one more thin product. Keeping zᵣ in the int kernel
            # keeps its products centred, so its int8 activations lose no more than usual.
            whole = zeros.round().clamp(0, (1 << qt.bits) - 1)
            offsets = (whole - zeros) * scales
            zeros = whole.to(torch.uint8)
        if qt.bits == 4 and self.perm is None:
            # Already the right bits: the GPTQ words, transposed and read as bytes.
            blob = int4_words_to_bytes(qt.qweight)
        else:
            codes = qt.codes() if self.perm is None else qt.codes()[:, self.perm]
            blob = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)
        blob = blob.reshape(n, nb, qt.group_size // 2)
        zp = None
        if not (qt.bits == 4 and qt.symmetric):  # ORT's default zero point is 8 = our symmetric int4
            zt = zeros.t().contiguous()  # [N, nb], 4-bit values packed two per byte along blocks
            zt = torch.nn.functional.pad(zt, (0, nb % 2))
            zp = (zt[:, 0::2] | (zt[:, 1::2] << 4)).to(torch.uint8)
        corrections = []  # (right_t [K, r], left_t [r, N]) pairs, summed as one thin product
        if self.lowrank is not None:
            corrections.append((self.lowrank.right.t(), self.lowrank.left.t()))
        if qt.mins is not None:
            group_of = torch.arange(k) // qt.group_size
            corrections.append(((group_of[:, None] == torch.arange(nb)[None, :]), offsets))
        factors = None
        if corrections:
            rights, lefts = zip(*corrections)
            factors = (
                torch.cat([r.to(torch.float32) for r in rights], dim=1).contiguous(),
                torch.cat([l.to(torch.float32) for l in lefts], dim=0).contiguous(),
            )
        return _matmul_part(
            prefix, x, y, blob, scales.t().contiguous(), zp, k, n, qt.group_size, self.accuracy_level, factors
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.input_scale is not None:
            x = x / self.input_scale
        if self.perm is not None:
            x = x[:, self.perm]
        return self._sessions.run(x)


class Int8MatMulInteger(OrtKernel):
    """``x [M, K] float -> [M, N] float32`` for an :class:`Int8Tensor` with the numerics of
    :meth:`Int8Tensor.linear_reference` (module docstring)."""

    def __init__(self, qt: Int8Tensor, num_threads: int | None = None) -> None:
        self.qt = qt
        self.n, self.k = qt.shape
        self._sessions = _Sessions(self._session, self.n, self.n * self.k, num_threads)

    @property
    def composable(self) -> bool:
        # SmoothQuant's scales and the float outlier product run in torch around the session.
        return self.qt.smooth is None and self.qt.outlier_idx is None

    def graph_part(self, prefix: str, x: str, y: str) -> GraphPart:
        """Per-token int8 activations, the integer product, and both scales, as nodes."""
        from onnx import TensorProto, helper

        def const(name: str, t: torch.Tensor, dtype: int) -> object:
            return _initializer(prefix + name, t, dtype)

        def scalar(name: str, value: float) -> object:
            return helper.make_tensor(prefix + name, TensorProto.FLOAT, [], [value])

        # Codes and activations both offset by 128 to uint8: MLAS's AVX2 u8s8 kernel sums
        # pairs of products in int16 with saturation (10% error on random weights, measured),
        # its u8u8 kernel does not.
        weight = (self.qt.qweight.to(torch.int16) + 128).to(torch.uint8).t().contiguous()  # [K, N]
        offset = torch.tensor(128, dtype=torch.uint8)
        initializers = [
            const("W", weight, TensorProto.UINT8),
            const("offset_u8", offset, TensorProto.UINT8),
            const("weight_scale", self.qt.scale.to(torch.float32), TensorProto.FLOAT),
            scalar("qmax", float(QMAX)), scalar("tiny", 1e-12), scalar("offset", 128.0),
            scalar("low", 128.0 - QMAX), scalar("high", 128.0 + QMAX),
        ]
        node, p = helper.make_node, prefix
        nodes = [  # absmax_quantize per row, then (q·q_wᵀ)·s_x·s_w as Int8MatMul computes it
            node("Abs", [x], [p + "abs"]),
            node("ReduceMax", [p + "abs"], [p + "absmax"], axes=[-1], keepdims=1),
            node("Div", [p + "absmax", p + "qmax"], [p + "raw_scale"]),
            node("Max", [p + "raw_scale", p + "tiny"], [p + "scale"]),
            node("Div", [x, p + "scale"], [p + "scaled"]),
            node("Round", [p + "scaled"], [p + "rounded"]),
            node("Add", [p + "rounded", p + "offset"], [p + "shifted"]),
            node("Clip", [p + "shifted", p + "low", p + "high"], [p + "clipped"]),
            node("Cast", [p + "clipped"], [p + "codes"], to=TensorProto.UINT8),
            node("MatMulInteger", [p + "codes", p + "W", p + "offset_u8", p + "offset_u8"], [p + "acc"]),
            node("Cast", [p + "acc"], [p + "acc_f"], to=TensorProto.FLOAT),
            node("Mul", [p + "acc_f", p + "scale"], [p + "row_scaled"]),
            node("Mul", [p + "row_scaled", p + "weight_scale"], [y]),
        ]
        return GraphPart(nodes, initializers)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        inliers, outliers = self.qt.split_input(x.to(torch.float32))
        y = self._sessions.run(inliers)
        return y if outliers is None else y + self.qt.outlier_product(outliers)


class OrtGraph(OrtKernel):
    """``A [M, k] -> Y [M, n]`` through a graph composed of kernels' products
    (:meth:`OrtKernel.graph_part`) and the work between them, as one session run.

    A decode step's runs are small and many: each costs ~12 µs of onnxruntime entry and,
    compiled, ~20 µs of torch dispatch around it (measured on this CPU), and a run's workers
    start cold, so fewer, larger runs are faster (``tierlm.edge.fused_layers``). ``part`` builds
    the nodes for each session made (:class:`_Sessions`); ``weights``: how many weights its
    products read.
    """

    def __init__(
        self, part: Callable[[], GraphPart], k: int, n: int, weights: int, num_threads: int | None = None
    ) -> None:
        self.n, self.k = n, k
        self._sessions = _Sessions(lambda threads: _build_session(part(), k, n, threads), n, weights, num_threads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._sessions.run(x.to(torch.float32))


def _matmul_part(
    prefix, x, y, blob, scales, zero_points, k, n, block_size, accuracy_level, factors=None
) -> GraphPart:
    """``MatMulNBits`` (plus the low-rank ``factors``' thin product) from ``x`` to ``y``."""
    from onnx import TensorProto, helper

    def init(name, t, dtype):
        return _initializer(prefix + name, t, dtype)

    inputs = [x, prefix + "B", prefix + "scales"]
    inits = [init("B", blob, TensorProto.UINT8), init("scales", scales.reshape(-1), TensorProto.FLOAT)]
    if zero_points is not None:
        inputs.append(prefix + "zero_points")
        inits.append(init("zero_points", zero_points.reshape(-1), TensorProto.UINT8))
    base_out = y if factors is None else prefix + "base"
    nodes = [
        helper.make_node(
            "MatMulNBits", inputs, [base_out], domain="com.microsoft",
            K=k, N=n, bits=4, block_size=block_size, accuracy_level=accuracy_level,
        )
    ]  # fmt: skip
    if factors is not None:
        right_t, left_t = factors  # [K, r], [r, N]
        inits += [init("right_t", right_t, TensorProto.FLOAT), init("left_t", left_t, TensorProto.FLOAT)]
        nodes += [
            helper.make_node("MatMul", [x, prefix + "right_t"], [prefix + "thin"]),
            helper.make_node("MatMul", [prefix + "thin", prefix + "left_t"], [prefix + "correction"]),
            helper.make_node("Add", [base_out, prefix + "correction"], [y]),
        ]
    return GraphPart(nodes, inits)


def _initializer(name: str, t: torch.Tensor, dtype: int) -> object:
    """An onnx initializer holding tensor ``t``'s bytes as ``dtype`` (an onnx ``TensorProto`` type)."""
    from onnx import helper

    return helper.make_tensor(name, dtype, list(t.shape), t.numpy().tobytes(), raw=True)


def _build_session(part: GraphPart, k: int, n: int, threads: int | None):
    """A session for the graph ``A [M, k] -> Y [M, n]`` made of ``part``, on ``threads``
    threads (None: the shared pool)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        part.nodes, "nbits",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        initializer=part.initializers,
    )  # fmt: skip
    # IR 9 / opset 17: the newest the onnx package writes may be newer than this ORT reads.
    model = helper.make_model(
        graph, ir_version=9,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )  # fmt: skip
    so = ort.SessionOptions()
    if threads is None:
        so.use_per_session_threads = False  # the pool of `share_pool`
    else:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        # Spinning workers would steal cores from torch's own threads between calls.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
