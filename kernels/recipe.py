"""Compression recipes: which method compresses which module, as a validated YAML file.

A recipe names module patterns (``fnmatch`` over our decoder's module names, e.g.
``layers.*.mlp.*`` or ``layers.0.self_attn.q_proj``), the method that compresses them and the
method's options, which are exactly the keyword arguments of the registered quantizer
(``QUANTIZERS.build(method, **options)``). The first rule that matches a linear wins; ``skip``
patterns keep modules dense whatever the rules say. The embedding table and the output layer
have their own entries, since they are not decoder-block linears and, in Gemma 3, are one
tied 262144 × 640 table that holds most of the model's bytes::

    name: gptq-w4g128
    calibration: {sequences: 64, seq_len: 512}
    rules:
      - match: "layers.*"
        method: gptq
        options: {bits: 4, group_size: 128}
    skip: []
    embedding: {method: rtn, options: {bits: 4, group_size: 128}}
    lm_head: null        # an untied output layer; tied models use the embedding's table

Pruning and low-rank factorization are stages of the ``composite`` method (see
:mod:`tierlm.kernels.composite`), so a pruning recipe is a composite with only a ``prune``
stage, a low-rank one a composite with only a ``lowrank`` stage. A rule whose composite has a
low-rank stage without a fixed ``rank`` takes a ``rank_budget`` instead: per-module ranks are
then allocated over every linear the rule matches, by singular-value energy, so that the
factors hold at most ``keep_params`` times those linears' dense parameter count::

    rules:
      - match: "layers.*"
        method: composite
        options: {lowrank: {method: asvd}}
        rank_budget: {keep_params: 0.8, min_rank: 1}     # a 20% parameter reduction

Validation builds every quantizer once, so an unknown method, option or bad value is an error
when the file is read (with its line), not an hour into a run.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tierlm.kernels.composite import CompositeCompressor
from tierlm.kernels.methods import QUANTIZERS, data_free_twin
from tierlm.kernels.quant.base import Quantizer
from tierlm.errors import ConfigError
from tierlm.yaml_source import YamlDocument, load_yaml, load_yaml_file



class MethodSpec(BaseModel):
    """One method and its options (the quantizer's keyword arguments)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _buildable(self) -> "MethodSpec":
        self.build()
        return self

    def build(self) -> Quantizer:
        """A fresh quantizer for this spec (quantizers may keep per-call state)."""
        try:
            return QUANTIZERS.build(self.method, **self.options)
        except TypeError as exc:  # an unknown keyword: say which method rejected it
            raise ValueError(f"bad options for method {self.method!r}: {exc}") from None


def _free_rank(quantizer: Quantizer) -> bool:
    """Whether ``quantizer`` is a composite whose low-rank stage waits for a budgeted rank."""
    return isinstance(quantizer, CompositeCompressor) and quantizer.factorizer is not None and quantizer.rank is None


class RankBudget(BaseModel):
    """A global parameter budget for a rule's low-rank factors (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_params: float = Field(gt=0, le=1, description="factor parameters / dense parameters of the matched linears")
    min_rank: int = Field(0, ge=0, description="rank every module gets first (1 keeps every linear alive)")


class Rule(MethodSpec):
    """Compress the linears whose names match any of ``match`` with ``method``."""

    match: list[str]
    rank_budget: RankBudget | None = None

    @field_validator("match", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("match")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value or any(not p for p in value):
            raise ValueError("give at least one non-empty module pattern")
        return value

    @model_validator(mode="after")
    def _budget_has_a_free_rank(self) -> "Rule":
        free_rank = _free_rank(self.build())
        if free_rank and self.rank_budget is None:
            raise ValueError("a composite low-rank stage needs a fixed rank or a rank_budget")
        if self.rank_budget is not None and not free_rank:
            raise ValueError("rank_budget needs method composite with a lowrank stage and no fixed rank")
        return self


class MixedPrecision(BaseModel):
    """A format per tensor under a byte budget, allocated by measured sensitivity
    (:mod:`tierlm.kernels.mixed`): every block linear (but ``skip``) gets one of ``candidates``,
    the embedding/output table one of ``table_candidates`` (default: the same)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bits_per_weight: float = Field(gt=0, le=32, description="all stored bytes of the weights × 8 / parameters")
    candidates: list[MethodSpec] = Field(min_length=1)
    table_candidates: list[MethodSpec] | None = None
    sequences: int = Field(8, ge=1, description="calibration sequences of the sensitivity (Fisher) pass")
    seq_len: int = Field(256, ge=8, description="their length (the pass keeps all logits for the backward)")

    @field_validator("candidates", "table_candidates")
    @classmethod
    def _priceable(cls, specs: list[MethodSpec] | None) -> list[MethodSpec] | None:
        for spec in specs or []:
            if isinstance(spec.build(), CompositeCompressor):
                raise ValueError("mixed-precision candidates are quantizers; composites are not priced per tensor")
            data_free_twin(spec.build())
        return specs


class Calibration(BaseModel):
    """How much calibration text the pipeline runs (sequences × seq_len tokens)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sequences: int = Field(64, ge=1)
    seq_len: int = Field(512, ge=8)
    batch_size: int = Field(8, ge=1, description="sequences per forward call")
    max_samples: int = Field(2048, ge=16, description="input rows kept per linear for methods that need samples")
    seed: int = 0


class Recipe(BaseModel):
    """A validated recipe; see the module docstring for the file format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    calibration: Calibration = Field(default_factory=Calibration)
    rules: list[Rule] = Field(default_factory=list)
    skip: list[str] = Field(default_factory=list)
    embedding: MethodSpec | None = None
    lm_head: MethodSpec | None = None
    mixed_precision: MixedPrecision | None = None

    @model_validator(mode="after")
    def _does_something(self) -> "Recipe":
        if self.mixed_precision is not None:
            if self.rules or self.embedding is not None or self.lm_head is not None:
                raise ValueError("mixed_precision chooses every module's method: leave rules, embedding and lm_head out")
            return self
        if not self.rules and self.embedding is None and self.lm_head is None:
            raise ValueError("the recipe compresses nothing: give rules, embedding, lm_head or mixed_precision")
        for field_name in ("embedding", "lm_head"):
            spec = getattr(self, field_name)
            if spec is not None and _free_rank(spec.build()):
                raise ValueError(f"{field_name}: a composite low-rank stage here needs a fixed rank")
        return self

    def rule_for(self, module: str) -> Rule | None:
        """The rule compressing decoder linear ``module``, or None (skipped or unmatched)."""
        if is_skipped(self, module):
            return None
        for rule in self.rules:
            if any(fnmatchcase(module, p) for p in rule.match):
                return rule
        return None

    def calibration_needs(self) -> set[str]:
        """Union of the statistics all methods of this recipe read (empty: data-free)."""
        specs = [*self.rules, self.embedding, self.lm_head]
        if self.mixed_precision is not None:
            specs += [*self.mixed_precision.candidates, *(self.mixed_precision.table_candidates or [])]
        return set().union(*(spec.build().needs for spec in specs if spec is not None))


def is_skipped(recipe: Recipe, module: str) -> bool:
    """Whether ``module`` matches one of the recipe's ``skip`` patterns (it stays dense)."""
    return any(fnmatchcase(module, p) for p in recipe.skip)


class RecipeError(ConfigError):
    """A recipe file that does not validate; the message names each bad field and its line."""


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file."""
    return _validate(load_yaml_file(path))


def parse_recipe(text: str, source: str = "<string>") -> Recipe:
    """Validate recipe YAML text (``source`` names it in errors)."""
    return _validate(load_yaml(text, source))


def _validate(document: YamlDocument) -> Recipe:
    if not isinstance(document.data, dict):
        raise RecipeError(f"{document.source}:1: expected a mapping with name and rules")
    try:
        return Recipe.model_validate(document.data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = document.line_of(loc)
            where = f"{document.source}:{line}" if line else document.source
            field = ".".join(str(p) for p in loc) or "(recipe)"
            lines.append(f"{where}: {field}: {err['msg']}")
        raise RecipeError("\n".join(lines)) from None
