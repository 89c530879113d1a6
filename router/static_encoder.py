"""A static sentence encoder distilled from all-MiniLM-L6-v2 and fitted to a pool: 0.08 ms a query.

MiniLM costs 4.9 ms of CPU per query in int8 on the router's 2-core machine
(bench/results/router.json), more than the whole overhead budget of a router hop. A static encoder looks each word piece up in
a table and averages: no attention, so order and context are lost, but no matmul either.

**Distillation** (Model2Vec's recipe, https://github.com/MinishLab/model2vec): every word piece of
MiniLM's vocabulary goes through MiniLM's float32 graph alone (``[CLS] piece [SEP]``) and its
pooled embedding becomes the piece's row. Rows are centred and weighted by SIF, with frequencies
estimated by Zipf's law from the piece's id, as Model2Vec does. A text's embedding is the mean of
its pieces' rows, L2-normalised. Model2Vec's own ``distill`` needs torch and transformers < 5.4
(this project runs 5.24); the graph of :mod:`tierlm.router.onnx_encoder` needs neither.

**Fitting to a pool** (Tokenlearn's idea, regression onto the teacher's embeddings, solved in
closed form): the texts a policy retrieves from are embedded by MiniLM once, and the table moves
by the least change (kernel ridge regression with :data:`RIDGE`) that makes each pool text's
static embedding reproduce MiniLM's. Queries then land near the pool rows MiniLM would have put
them near, for the words the pool uses. :data:`RIDGE` was chosen on a train-only holdout
(4,000 HEADLINES train rows fitted, the other 1,000 embedded): 0.01 and 0.03 gave the highest
cosine to MiniLM (0.935), 0.03 the better knn vote of the two (0.731 against 0.713; MiniLM 0.762);
1e-4 reproduced the fitted rows more closely and the held-out ones worse (0.893). Never chosen on
the rows a result reports.

The fitted table is not MiniLM: scorers trained with MiniLM do not load with it (no
``approximates``). bench/results/encoders.json measures what it keeps on HEADLINES dev with the
5,000-row train pool: cosine 0.94 to MiniLM, 58% of MiniLM's 8 retrieved demonstrations, knn
vote 0.752 (MiniLM 0.770), a linear probe as good as on MiniLM's embedding (0.842 and 0.843), at
0.08 ms of CPU per query against int8 MiniLM's 5.1.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tierlm.edge.catalog import cache_root
from tierlm.router.embeddings import DIM, CachingEncoder, EmbeddingCache, default_model_dir, model_fingerprint

#: Bump when the distillation or the fit changes: cached tables of another version are rebuilt.
TABLE_VERSION = 1
#: Kernel ridge regularisation of the fit (see the module docstring for how it was chosen).
RIDGE = 0.03
#: Pool texts the fit uses at most (a seeded sample beyond): the fit solves a dense system of this size.
MAX_FIT_TEXTS = 6000
_SIF_COEFFICIENT = 1e-4  # Model2Vec's default
_DISTILL_BATCH = 512
_SEED = 0


def _tokenizer(model_dir: Path, max_length: int):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


def _write_atomically(path: Path, array: np.ndarray) -> None:
    """Processes starting together (router workers) never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".building-", suffix=".npy", delete=False) as staging:
        np.save(staging, array)
    os.replace(staging.name, path)


def distilled_table(model_dir: Path | None = None, cache_dir: str | Path | None = None) -> np.ndarray:
    """The (vocabulary x 384) table distilled from MiniLM, built once into the tierlm cache (~15 s)."""
    import onnxruntime as ort

    from tierlm.router.onnx_encoder import session_options, prepare_encoder

    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    digest = hashlib.sha256(f"{model_fingerprint(model_dir)}:static-v{TABLE_VERSION}".encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / "encoders" / f"all-MiniLM-L6-v2-static-{digest}.npy"
    if path.is_file():
        return np.load(path)
    session = ort.InferenceSession(str(prepare_encoder(model_dir, cache_dir, precision="float32")), session_options(2),
                                   providers=["CPUExecutionProvider"])
    tokenizer = _tokenizer(model_dir, 512)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    ids = np.arange(tokenizer.get_vocab_size(), dtype=np.int64)
    pieces = np.stack([np.full_like(ids, cls), ids, np.full_like(ids, sep)], axis=1)
    rows = np.concatenate([session.run(None, {"input_ids": batch, "attention_mask": np.ones_like(batch)})[0]
                           for batch in np.array_split(pieces, -(-len(pieces) // _DISTILL_BATCH))])
    rows -= rows.mean(axis=0)
    # SIF with Zipf frequencies from the id (Model2Vec's compute_weights): common pieces weigh less.
    inverse_rank = 1.0 / np.arange(2, len(rows) + 2)
    frequency = inverse_rank / inverse_rank.sum()
    table = (rows * (_SIF_COEFFICIENT / (_SIF_COEFFICIENT + frequency))[:, None]).astype(np.float32)
    _write_atomically(path, table)
    return table


def _mean_pieces(tokenizer, texts: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """Each text's piece ids (no special tokens) and the weight of each piece in its mean."""
    ids = [np.asarray(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    return ids, np.array([1.0 / max(len(i), 1) for i in ids])


def fit_to_pool(table: np.ndarray, tokenizer, texts: Sequence[str], teacher: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """``table`` moved by the least change (in the ridge sense) that makes the mean-of-pieces
    embedding of each text reproduce ``teacher`` (its MiniLM embedding, unit rows).

    With ``A`` the (texts x pieces) matrix of mean weights and ``R = teacher - A @ table``, the
    change is ``A.T @ solve(A @ A.T + ridge * I, R)``: only pieces the texts use move. The table
    is first scaled so that its embeddings have the teacher's typical norm, which keeps ``ridge``
    meaningful whatever the distillation's scale."""
    if len(texts) > MAX_FIT_TEXTS:
        keep = np.sort(np.random.default_rng(_SEED).choice(len(texts), MAX_FIT_TEXTS, replace=False))
        texts, teacher = [texts[i] for i in keep], teacher[keep]
    ids, weights = _mean_pieces(tokenizer, texts)
    used = np.unique(np.concatenate(ids))
    column = np.searchsorted(used, np.concatenate(ids))
    design = np.zeros((len(texts), len(used)), dtype=np.float64)
    np.add.at(design, (np.repeat(np.arange(len(texts)), [len(i) for i in ids]), column), np.repeat(weights, [len(i) for i in ids]))
    start = design @ table[used]
    scale = np.median(np.linalg.norm(teacher, axis=1)) / max(np.median(np.linalg.norm(start, axis=1)), 1e-12)
    fitted = table * np.float32(scale)
    residual = teacher - start * scale
    alpha = np.linalg.solve(design @ design.T + ridge * np.eye(len(texts)), residual)
    fitted[used] += (design.T @ alpha).astype(np.float32)
    return fitted


def corpus_digest(texts: Sequence[str]) -> str:
    """A short digest of a pool's texts: a fitted table belongs to exactly these texts."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


class StaticEncoder(CachingEncoder):
    """``encode(texts) -> float32 (n, 384)`` unit rows from a piece table: mean of rows, normalised.

    Build one with :meth:`for_pool`. A text with no word pieces (empty) embeds as zeros.

    Args:
        table: (vocabulary x 384) float32 rows, one per MiniLM word piece.
        model_id: names the table (embedding caches and scorers key on it).
        model_dir: the MiniLM folder whose tokenizer splits texts into pieces.
    """

    def __init__(self, table: np.ndarray, model_id: str, model_dir: Path | None = None, *,
                 cache: EmbeddingCache | None = None, batch_size: int = 256, max_length: int = 256) -> None:
        super().__init__(cache=cache, batch_size=batch_size, max_length=max_length)
        if table.ndim != 2 or table.shape[1] != DIM:
            raise ValueError(f"a static table has {DIM} columns, got shape {table.shape}")
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        self._tokenizer = _tokenizer(self.model_dir, max_length)
        if self._tokenizer.get_vocab_size() != len(table):
            raise ValueError(f"table has {len(table)} rows for a vocabulary of {self._tokenizer.get_vocab_size()}")
        self._table = np.ascontiguousarray(table, dtype=np.float32)
        self.model_id = model_id

    @classmethod
    def for_pool(cls, texts: Sequence[str], *, cache_dir: str | Path | None = None, threads: int = 1) -> StaticEncoder:
        """The table distilled from MiniLM and fitted to ``texts`` (a policy's pool), built once
        per machine and pool into the tierlm cache; the pool's MiniLM embeddings come from the
        float32 ONNX graph through the on-disk embedding cache."""
        from tierlm.router.onnx_encoder import OnnxEncoder

        model_dir = default_model_dir()
        texts = list(texts)
        if not texts:
            raise ValueError("a static encoder is fitted to a pool: the pool has no texts")
        model_id = f"{model_fingerprint(model_dir)}:static-v{TABLE_VERSION}:ridge{RIDGE:g}:pool-{corpus_digest(texts)}"
        path = cache_root(cache_dir) / "encoders" / f"static-{hashlib.sha256(model_id.encode()).hexdigest()[:16]}.npy"
        if path.is_file():
            return cls(np.load(path), model_id, model_dir)
        teacher = OnnxEncoder(model_dir, precision="float32", threads=threads, cache_dir=cache_dir)
        with teacher.caching():
            targets = teacher.encode(texts)
        table = fit_to_pool(distilled_table(model_dir, cache_dir), _tokenizer(model_dir, 256), texts, targets)
        _write_atomically(path, table)
        return cls(table, model_id, model_dir)

    def _forward(self, texts: list[str]) -> np.ndarray:
        ids, weights = _mean_pieces(self._tokenizer, texts)
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, (pieces, weight) in enumerate(zip(ids, weights)):
            if len(pieces):
                out[row] = self._table[pieces].sum(axis=0) * weight
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
