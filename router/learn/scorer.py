"""The learned answer scorer: P(answer correct | query, answer, tier, the tier's confidence signals).

Features are text features from the sentence encoder (see :mod:`tierlm.router.learn.features`) plus
the tier's confidence signals, all standardised; the model is logistic regression, either one
model shared by all tiers (with a tier one-hot) or one model per tier. :func:`train` decides
between those two, and the regularisation strength, by cross-validated log-loss with folds
grouped by query (the same query answered by two tiers never sits on both sides of a split),
then refits the winner on every record (a scorer's ``scorer.json`` records the choice and the
cross-validated metrics behind it; with about a thousand features on a few thousand records,
strong regularisation tends to win).

Cross-fitting: a cascade's thresholds fitted on the scorer's own training split must not see
in-sample scores (they are over-confident, and a cascade fitted on them promises more accuracy
than it delivers on new queries). :func:`train` therefore keeps, for every training
record, its *out-of-fold* score (from the model of the chosen variant fitted without that
record's query group) in :attr:`Scorer.out_of_fold`; the optimizer fits on those
(:func:`tierlm.router.learn.offline.fit_scores`).

A saved scorer is a folder: ``scorer.json`` (metadata: features, tiers, encoder id, training
split, cross-validated metrics, library versions), ``coefficients.npz`` (plain float64 arrays)
and ``out_of_fold.json`` (tier -> query id -> out-of-fold score on the training split).
Loading needs numpy and the encoder, not scikit-learn, and never unpickles anything.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from tierlm.config import SCORER_FILE
from tierlm.errors import MissingResource
from tierlm.router.embeddings import TextEncoder, compatible
from tierlm.router.learn.features import (
    CONFIDENCE_FEATURES,
    TextFeatures,
    confidence_features,
    joint_text,
    separate_features,
)
from tierlm.router.learn.records import AnswerRecord

FORMAT_VERSION = 1
_SHARED = "*"  # key of the one model all tiers share
_OUT_OF_FOLD = "out_of_fold.json"

ScoreTable = Mapping[str, Mapping[str, float]]
"""Scores by tier, then by query id."""


@dataclass(frozen=True)
class _Linear:
    """One logistic regression: standardise, dot, sigmoid."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def __post_init__(self) -> None:
        # Standardising and the dot product folded into one: ((x - mean) / scale) @ coef + b
        # == x @ (coef / scale) + (b - mean @ (coef / scale)): one pass over the features.
        weights = self.coef / self.scale
        object.__setattr__(self, "_weights", weights)
        object.__setattr__(self, "_bias", self.intercept - float(self.mean @ weights))

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = x @ self._weights + self._bias
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without exp overflow


class Scorer:
    """A trained scorer. Build one with :func:`train` or :meth:`load`.

    Args:
        encoder: the sentence encoder the scorer was trained with (checked by its ``model_id``).
        text_features: ``"joint"`` or ``"separate"``.
        tiers: tier names, in one-hot order.
        models: per tier name, or ``"*"`` for the shared model.
        metadata: what :meth:`save` writes to ``scorer.json``.
        out_of_fold: per tier and query id of the training split, the score from the model
            fitted without that query (see the module docstring); empty if not cross-fitted.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        text_features: TextFeatures,
        tiers: Sequence[str],
        models: Mapping[str, _Linear],
        metadata: dict,
        out_of_fold: ScoreTable | None = None,
    ) -> None:
        self.encoder = encoder
        self.text_features = text_features
        self.tiers = tuple(tiers)
        self._models = dict(models)
        self.metadata = metadata
        self.out_of_fold = {tier: dict(scores) for tier, scores in (out_of_fold or {}).items()}
        self.per_tier = _SHARED not in self._models
        # Answers repeat (a label set has a few strings): keep their embeddings.
        self._answer_cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def score(
        self,
        query: str,
        answer: str,
        tier: str,
        token_logprobs: Sequence[float] = (),
        label_logprobs: Mapping[str, float] | None = None,
        *,
        query_embedding: np.ndarray | None = None,
    ) -> float:
        """P(correct) for one answer.

        Args:
            query_embedding: the query's embedding if the caller already has it (``separate``
                features only, e.g. from retrieval or the knn-vote tier); saves the encoder pass.
        """
        record = AnswerRecord(query, answer, tier, tuple(token_logprobs), label_logprobs)
        embeddings = None if query_embedding is None else np.atleast_2d(query_embedding)
        return float(self.score_records([record], query_embeddings=embeddings)[0])

    def score_text_features(self, text: np.ndarray, record: AnswerRecord) -> float:
        """P(correct) for one answer whose text features the caller computed (the router embeds
        off its event loop): for ``separate`` features :func:`separate_features` of the query's
        and the answer's embeddings, for ``joint`` the embedding of :func:`joint_text`."""
        if record.tier not in self.tiers:
            raise ValueError(f"tier {record.tier!r} unknown to this scorer (trained on {list(self.tiers)})")
        x = _assemble(np.atleast_2d(text), [record], self.tiers if not self.per_tier else ())
        return float(self._models[record.tier if self.per_tier else _SHARED].predict(x)[0])

    def score_records(
        self, records: Sequence[AnswerRecord], *, query_embeddings: np.ndarray | None = None
    ) -> np.ndarray:
        """P(correct) for each record, batched through the encoder."""
        unknown = {r.tier for r in records} - set(self.tiers)
        if unknown:
            raise ValueError(f"tiers {sorted(unknown)} unknown to this scorer (trained on {list(self.tiers)})")
        x = self._features(records, query_embeddings)
        return _predict_variant(self._models, x, np.array([r.tier for r in records]))

    def _features(self, records: Sequence[AnswerRecord], query_embeddings: np.ndarray | None) -> np.ndarray:
        text = _text_features(
            self.encoder, self.text_features, records, query_embeddings, answer_cache=self._answer_cache
        )
        return _assemble(text, records, self.tiers if not self.per_tier else ())

    def save(self, directory: Path) -> None:
        """Write ``scorer.json`` and ``coefficients.npz`` into ``directory`` (created if needed)."""
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for i, (name, model) in enumerate(self._models.items()):
            arrays |= {
                f"m{i}_mean": model.mean,
                f"m{i}_scale": model.scale,
                f"m{i}_coef": model.coef,
                f"m{i}_intercept": np.array([model.intercept]),
            }
        np.savez(directory / "coefficients.npz", **arrays)
        meta = dict(self.metadata, models=list(self._models))
        (directory / SCORER_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (directory / _OUT_OF_FOLD).write_text(json.dumps(self.out_of_fold) + "\n")

    @classmethod
    def load(cls, directory: Path, encoder: TextEncoder | None = None) -> Scorer:
        """Load a scorer saved by :meth:`save`.

        Args:
            encoder: the encoder to use; defaults to a fresh MiniLM ``Encoder``. It must be the
                one the scorer was trained with, or a checked approximation of it
                (:func:`~tierlm.router.embeddings.compatible`).

        Raises:
            MissingResource: when ``directory`` holds no saved scorer.
            ValueError: on an unknown format version or a different encoder.
        """
        if not (directory / SCORER_FILE).is_file():
            raise MissingResource(f"no scorer in {directory} (no {SCORER_FILE}): train one with `tierlm router train`")
        meta = json.loads((directory / SCORER_FILE).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: scorer format {meta.get('format_version')}, expected {FORMAT_VERSION}")
        if encoder is None:
            from tierlm.router.embeddings import Encoder

            encoder = Encoder()
        if not compatible(encoder, meta["encoder"]):
            raise ValueError(f"{directory}: trained with encoder {meta['encoder']}, given {encoder.model_id}")
        # allow_pickle=False: the file holds plain float arrays and must never run code.
        with np.load(directory / "coefficients.npz", allow_pickle=False) as arrays:
            models = {
                name: _Linear(
                    mean=arrays[f"m{i}_mean"],
                    scale=arrays[f"m{i}_scale"],
                    coef=arrays[f"m{i}_coef"],
                    intercept=float(arrays[f"m{i}_intercept"][0]),
                )
                for i, name in enumerate(meta["models"])
            }
        oof_path = directory / _OUT_OF_FOLD
        out_of_fold = json.loads(oof_path.read_text()) if oof_path.exists() else None
        return cls(encoder, meta["text_features"], meta["tiers"], models, meta, out_of_fold)


def _text_features(
    encoder: TextEncoder,
    kind: TextFeatures,
    records: Sequence[AnswerRecord],
    query_embeddings: np.ndarray | None,
    *,
    answer_cache: OrderedDict[str, np.ndarray] | None = None,
    cache_size: int = 4096,
) -> np.ndarray:
    if kind == "joint":
        return encoder.encode([joint_text(r.query, r.answer) for r in records]).astype(np.float64)
    if query_embeddings is None:
        query_embeddings = encoder.encode([r.query for r in records])
    if answer_cache is None:
        answers = encoder.encode([r.answer for r in records])
    else:
        missing = list(dict.fromkeys(r.answer for r in records if r.answer not in answer_cache))
        if missing:
            answer_cache.update(zip(missing, encoder.encode(missing)))
        while len(answer_cache) > cache_size:
            answer_cache.popitem(last=False)
        answers = np.stack([answer_cache[r.answer] for r in records])
    return separate_features(np.asarray(query_embeddings, dtype=np.float64), answers.astype(np.float64))


def _assemble(text: np.ndarray, records: Sequence[AnswerRecord], one_hot_tiers: Sequence[str]) -> np.ndarray:
    confidence = np.stack([confidence_features(r.answer, r.token_logprobs, r.label_logprobs) for r in records])
    parts = [text, confidence]
    if one_hot_tiers:
        index = {tier: i for i, tier in enumerate(one_hot_tiers)}
        one_hot = np.zeros((len(records), len(one_hot_tiers)))
        one_hot[np.arange(len(records)), [index[r.tier] for r in records]] = 1.0
        parts.append(one_hot)
    return np.hstack(parts)


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> _Linear:
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0  # constant columns (e.g. an absent signal) stay 0 after centring
    if len(np.unique(y)) < 2:
        # One class only: predict its (smoothed) rate; logistic regression cannot fit this.
        rate = (y.sum() + 0.5) / (len(y) + 1.0)
        return _Linear(mean, scale, np.zeros(x.shape[1]), math.log(rate / (1 - rate)))
    model = LogisticRegression(C=c, max_iter=5000, random_state=seed)
    model.fit((x - mean) / scale, y)
    return _Linear(mean, scale, model.coef_[0].astype(np.float64), float(model.intercept_[0]))


def _fit_variant(
    x: np.ndarray, y: np.ndarray, tiers: np.ndarray, per_tier: bool, c: float, seed: int
) -> dict[str, _Linear]:
    if not per_tier:
        return {_SHARED: _fit(x, y, c, seed)}
    return {tier: _fit(x[tiers == tier], y[tiers == tier], c, seed) for tier in sorted(set(tiers.tolist()))}


def _predict_variant(models: Mapping[str, _Linear], x: np.ndarray, tiers: np.ndarray) -> np.ndarray:
    if _SHARED in models:
        return models[_SHARED].predict(x)
    out = np.empty(len(x))
    for tier, model in models.items():
        rows = tiers == tier
        out[rows] = model.predict(x[rows])
    return out


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    p = np.clip(p, 1e-6, 1 - 1e-6)
    out = {"log_loss": float(log_loss(y, p, labels=[0, 1])), "brier": float(brier_score_loss(y, p))}
    out["auroc"] = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return out


def _versions() -> dict[str, str]:
    out = {}
    for package in ("tierlm", "numpy", "scikit-learn", "transformers", "torch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def train(
    records: Sequence[AnswerRecord],
    encoder: TextEncoder,
    *,
    text_features: TextFeatures = "separate",
    split: str = "train",
    folds: int = 5,
    c_grid: Sequence[float] = (0.001, 0.003, 0.01, 0.03),
    seed: int = 0,
    query_embeddings: np.ndarray | None = None,
) -> Scorer:
    """Fit a scorer on labelled records (``correct`` set on every one).

    Chooses shared-vs-per-tier and ``C`` from ``c_grid`` by ``folds``-fold cross-validated
    log-loss, folds grouped by ``query_id`` (or by query text where ids are empty), then refits
    the winner on all records. The cross-validated metrics of every candidate go into the
    metadata, so the choice can be audited, and the winner's out-of-fold scores become
    :attr:`Scorer.out_of_fold` (the same folds chose the variant among 8 candidates: a small
    selection effect, far below the in-sample bias they remove).

    Args:
        split: name of the data split the records come from, recorded in the metadata.
        query_embeddings: the records' query embeddings if already computed (``separate`` only).
    """
    from sklearn.model_selection import GroupKFold

    if not records:
        raise ValueError("no records to train on")
    if any(r.correct is None for r in records):
        raise ValueError("every training record needs `correct` set")
    y = np.array([int(bool(r.correct)) for r in records])
    tier_names = sorted({r.tier for r in records})
    tiers = np.array([r.tier for r in records])
    groups = np.array([r.query_id or r.query for r in records])
    text = _text_features(encoder, text_features, records, query_embeddings)
    design = {
        False: _assemble(text, records, tier_names),  # shared model, tier one-hot
        True: _assemble(text, records, ()),  # one model per tier
    }

    n_folds = min(folds, len(set(groups.tolist())))
    held_out: dict[tuple[bool, float], np.ndarray] = {}
    if n_folds >= 2:
        splits = list(GroupKFold(n_splits=n_folds).split(design[False], y, groups))
        for per_tier in (False, True):
            x = design[per_tier]
            for c in c_grid:
                pred = held_out[(per_tier, c)] = np.empty(len(y))
                for fit_rows, test_rows in splits:
                    models = _fit_variant(x[fit_rows], y[fit_rows], tiers[fit_rows], per_tier, c, seed)
                    pred[test_rows] = _predict_variant(models, x[test_rows], tiers[test_rows])
    candidates = {key: _metrics(y, pred) for key, pred in held_out.items()}
    per_tier, c = min(candidates, key=lambda key: candidates[key]["log_loss"]) if candidates else (False, c_grid[-1])
    chosen_per_tier = (
        {tier: _metrics(y[tiers == tier], held_out[(per_tier, c)][tiers == tier]) for tier in tier_names}
        if held_out
        else {}
    )

    models = _fit_variant(design[per_tier], y, tiers, per_tier, c, seed)
    out_of_fold: dict[str, dict[str, float]] = {}
    if held_out:
        for record, score in zip(records, held_out[(per_tier, c)].tolist()):
            out_of_fold.setdefault(record.tier, {})[record.query_id] = score
    metadata = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "encoder": encoder.model_id,
        "text_features": text_features,
        "confidence_features": list(CONFIDENCE_FEATURES),
        "tiers": tier_names,
        "per_tier": per_tier,
        "C": c,
        "training": {"split": split, "records": len(records), "positive_rate": float(y.mean()), "folds": n_folds},
        "cross_validation": [{"per_tier": key[0], "C": key[1], **metrics} for key, metrics in candidates.items()],
        "cross_validation_by_tier": chosen_per_tier,
        "versions": _versions(),
    }
    return Scorer(encoder, text_features, tier_names, models, metadata, out_of_fold)
