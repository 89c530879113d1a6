"""The cascade policy file: pydantic models, loading with line-numbered errors.

The policy says which tiers exist, what each costs, how answers are scored and when the
cascade escalates (docs/policy.md). The router reloads it at run time, so every mistake is
caught here, with the field and the line named, before a bad file can replace a good one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator, model_validator

from tierlm.errors import ConfigError
from tierlm.yaml_source import YamlDocument, load_yaml, load_yaml_file

NonNegative = Annotated[float, Field(ge=0.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
TierName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]

# What `tierlm router train` writes into a scorer folder first (router/learn/scorer.py).
SCORER_FILE = "scorer.json"

_HOST_PORT = r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})"
# host:port (gRPC resolves the name through DNS), or gRPC's explicit targets: dns:///host:port, and
# ipv4:/ipv6: lists of addresses the channel balances over.
_ADDRESS = re.compile(rf"^(?:dns:///)?{_HOST_PORT}$")
_ADDRESS_LIST = re.compile(rf"^ipv[46]:{_HOST_PORT}(?:,{_HOST_PORT})*$")


class _Strict(BaseModel):
    # Unknown fields are typos more often than not; reject them rather than ignore them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class CostModel(_Strict):
    """What one call to a tier costs, in the policy's currency (USD unless you say otherwise)."""

    per_input_token: NonNegative = 0.0
    per_output_token: NonNegative = 0.0
    per_call: NonNegative = 0.0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return self.per_call + self.per_input_token * input_tokens + self.per_output_token * output_tokens


class TLSClientConfig(_Strict):
    """How the router verifies a tier's server certificate (system roots when ca_file is unset)."""

    ca_file: Path | None = None
    server_name: str | None = None


class Calibration(_Strict):
    """Contextual calibration (Zhao et al., 2021) of label-choice scores.

    The tier scores each label after the real prompt and after the same prompt (same
    demonstrations) with the query replaced by each content-free string; the label distribution
    the model gives a content-free input is its bias, which calibration divides out. Off unless
    a tier's measurements on training data say otherwise: on HEADLINES it swung accuracy by up
    to 0.34 with the choice of content-free string and never helped retrieved prompts.
    """

    content_free: Annotated[tuple[str, ...], Field(min_length=1)] = ("N/A", "", "[MASK]")


class PromptStrategy(_Strict):
    """How one tier builds its prompt (FrugalGPT's prompt adaptation): an instruction, ``k``
    demonstrations and the query, each block rendered with ``template``.

    ``selection``: ``fixed`` (the first ``k`` demonstrations of ``fixed_prompt``, else of the
    policy's pool), ``balanced`` (``k`` pool rows drawn once with ``seed``, spread evenly over
    ``labels``) or ``retrieved`` (the ``k`` pool rows nearest the query by sentence-embedding
    similarity, the nearest last). With ``labels`` the tier answers by label choice (it scores
    each label after the prompt); without, it generates up to ``max_tokens`` tokens, stopping at
    ``stop``.
    """

    instruction: str = ""
    template: str = Field("Q: {query}\nA:", description="a query block; a demonstration is the block, a space and its answer")
    selection: Literal["fixed", "balanced", "retrieved"] = "fixed"
    k: Annotated[int, Field(ge=0)] = 8
    labels: tuple[str, ...] = ()
    calibration: Calibration | None = None
    seed: int = 0
    fixed_prompt: Path | None = None
    max_tokens: Annotated[int, Field(ge=1, le=4096)] = 32
    stop: tuple[str, ...] = ("\n",)

    @model_validator(mode="after")
    def _consistent(self) -> PromptStrategy:
        if self.template.count("{query}") != 1:
            raise ValueError("`template` must contain {query} exactly once")
        if self.selection == "balanced" and not self.labels:
            raise ValueError("balanced selection needs a non-empty `labels` list")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"`labels` has duplicates: {list(self.labels)}")
        if self.calibration is not None and not self.labels:
            raise ValueError("calibration applies to label-choice scoring: set `labels`")
        return self

    @property
    def label_continuations(self) -> tuple[str, ...]:
        """What label-choice scoring appends after the prompt, one per label."""
        return tuple(f" {label}" for label in self.labels)


class LaunchConfig(_Strict):
    """How `tierlm up` runs a tier on this machine (tierlm/app/stack.py); the router ignores it.

    `knn` serves the neighbour vote, `edge` an edge node on the tier's `model`, `cloud` the
    Ray Serve app with one deployment of the tier's `model`."""

    runtime: Literal["knn", "edge", "cloud"]
    threads: Annotated[int, Field(ge=1)] = 1
    max_batch: Annotated[int, Field(ge=1)] = 8
    max_queue: Annotated[int, Field(ge=0)] = 64
    # cloud only: the Serve deployment's engine and its options (vLLM engine args, or the
    # torch engine's threads/max_batch/max_queue, which default to the fields above).
    engine: Literal["torch", "vllm"] = "torch"
    engine_options: dict[str, Any] = {}
    num_cpus: Annotated[int, Field(ge=1)] | None = None


# The no-LLM models (router/nollm): the ones a tier may run inside the router (`in_router`).
IN_ROUTER_MODELS = ("knn-vote", "minilm-probe")


class TierConfig(_Strict):
    name: TierName
    # Where the tier serves the Generator contract; none for an `in_router` tier.
    address: str | None = None
    # A no-LLM model (`model` in IN_ROUTER_MODELS) that the router answers itself, from the query
    # embedding and pool similarities it computes for every request anyway: no call, no process.
    in_router: bool = False
    cost: CostModel = CostModel()
    timeout_s: Annotated[float, Field(gt=0.0)] = 10.0
    tls: TLSClientConfig | None = None
    # Name of the environment variable holding the key this tier expects, if it has auth on.
    api_key_env: str | None = None
    # What the tier serves: a model name from `tierlm model list`, a no-LLM model (knn-vote,
    # minilm-probe) or a model/artifact folder (a path: it holds a "/" or starts with "~" or ".").
    # Offline tools (`tierlm router collect`) run it in-process from here.
    model: str | None = None
    # On a cloud app serving several models (cloud.yaml's `models`): the deployment this tier
    # calls, by its `name`, sent as `tierlm-model` request metadata. Unset: the app's first model.
    served_model: str | None = None
    # FrugalGPT's prompt adaptation: with a strategy, the router sends the tier a prompt of its
    # own (instruction + demonstrations + the query) and scores its answer by label choice.
    prompt: PromptStrategy | None = None
    # Optional: how `tierlm up` starts this tier locally; without it the tier runs elsewhere.
    launch: LaunchConfig | None = None

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _ADDRESS.match(value) or _ADDRESS_LIST.match(value)
        ports = [int(p) for p in re.findall(r":(\d{1,5})(?:,|$)", value)] if match else []
        if not ports or not all(0 < p < 65536 for p in ports):
            raise ValueError("expected host:port with a port in 1..65535 (e.g. 127.0.0.1:50061), dns:///host:port, "
                             "or ipv4:host:port,host:port")
        return value


class ScorerConfig(_Strict):
    path: Path
    features: list[Literal["query", "answer", "logprobs"]] = ["query", "answer", "logprobs"]


class CascadeConfig(_Strict):
    order: Annotated[list[TierName], Field(min_length=1)]
    # Accept a stage's answer when the scorer's P(correct) >= its threshold; the last stage
    # always accepts, so it has no threshold.
    thresholds: dict[TierName, Probability] = {}
    budget_per_query: NonNegative | None = None


class SpeculativeConfig(_Strict):
    """Speculative decoding across two tiers (docs/speculative.md): for a request whose
    max_tokens is above ``min_max_tokens``, the cascade reaches the ``verify`` tier through the
    ``draft`` tier, which drafts ``k`` tokens a round (adapting up to ``max_k``) and has the verify
    tier check them; the answer is the verify tier's own. If speculation fails midway, the
    ``fallback`` tier answers alone (the verify tier unless set). Both tiers name their `model`,
    and the router refuses the policy when the two models' tokenizers differ."""

    draft: TierName
    verify: TierName
    k: Annotated[int, Field(ge=1, le=16)] = 4
    max_k: Annotated[int, Field(ge=1, le=16)] = 8
    min_max_tokens: Annotated[int, Field(ge=0)] = 64
    fallback: TierName | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SpeculativeConfig:
        if self.draft == self.verify:
            raise ValueError("draft and verify must be two different tiers")
        if self.k > self.max_k:
            raise ValueError(f"k ({self.k}) must not exceed max_k ({self.max_k})")
        if self.fallback is not None and self.fallback not in (self.draft, self.verify):
            raise ValueError(f"fallback must be the draft ({self.draft!r}) or the verify ({self.verify!r}) tier")
        return self

    @property
    def fallback_tier(self) -> str:
        return self.fallback or self.verify


class TenantConfig(_Strict):
    # SHA-256 of the tenant's API key, hex; the key itself never appears in the file.
    key_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    budget_per_day: NonNegative | None = None
    budget_per_query: NonNegative | None = None


class LimitsConfig(_Strict):
    max_request_bytes: Annotated[int, Field(gt=0)] = 1 << 20
    max_concurrent_requests: Annotated[int, Field(gt=0)] = 256
    # The largest max_tokens and the most label choices a request may ask for.
    max_tokens: Annotated[int, Field(gt=0)] = 4096
    max_choices: Annotated[int, Field(gt=0)] = 64
    # A budget hold lasts the request's tiers' timeouts plus this margin; if its router dies, any
    # router's sweep frees it after that.
    lease_margin_s: Annotated[float, Field(gt=0.0)] = 30.0


class BreakerConfig(_Strict):
    failures_to_open: Annotated[int, Field(gt=0)] = 5
    cooldown_s: Annotated[float, Field(gt=0.0)] = 10.0


class CacheConfig(_Strict):
    enabled: bool = False
    ttl_s: Annotated[float, Field(gt=0.0)] = 300.0
    max_entries: Annotated[int, Field(gt=0)] = 10_000


class ExploreConfig(_Strict):
    """Exploration: a share of requests is also sent to every tier the cascade skipped, after the
    answer went back, so logged traffic shows what each tier would have said (without it, later
    tiers are seen only on the queries the live policy escalated, and a refit learns its own bias)."""

    share: Probability = 0.0
    # The most exploration may spend per UTC day, across every router replica (the operator pays).
    budget_per_day: NonNegative = 0.0


class AlarmConfig(_Strict):
    """When live calibration says the scorer has drifted: ``metric`` of a tier's scores over its
    last ``window`` labelled answers above ``above`` (once ``min_labels`` are in)."""

    metric: Literal["ece", "brier"] = "ece"
    above: Probability = 0.15
    window: Annotated[int, Field(ge=10)] = 200
    min_labels: Annotated[int, Field(ge=1)] = 50


class LearningConfig(_Strict):
    """Learning from live traffic (feedback, exploration, calibration alarms, refits)."""

    # Keep, on each ledger row, what the router saw: the query, every tier's answer and score.
    # Off by default: it stores queries and answers. Feedback, refits and live calibration need it.
    record: bool = False
    # Judges a reference answer given as feedback against every answer (a judge name).
    feedback_judge: str = "normalized"
    explore: ExploreConfig = ExploreConfig()
    alarm: AlarmConfig | None = None
    # The mean cost per query a refit may spend; default: what the live policy spends.
    refit_budget_per_query: NonNegative | None = None

    @model_validator(mode="after")
    def _exploration_is_recorded_and_capped(self) -> LearningConfig:
        if self.explore.share > 0 and not self.record:
            raise ValueError("explore.share > 0 needs record: true (explored answers are kept in the request's record)")
        if self.explore.share > 0 and self.explore.budget_per_day <= 0:
            raise ValueError("explore.share > 0 needs explore.budget_per_day > 0: exploration spends money, so it is capped")
        return self


ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")]


class ModelRoute(_Strict):
    """What one OpenAI `model` name selects, like a LiteLLM model group: the whole cascade (no
    field set), the cascade up to `max_tier`, or `force_tier` alone; optionally a tighter
    per-query budget."""

    force_tier: TierName | None = None
    max_tier: TierName | None = None
    budget_per_query: NonNegative | None = None
    # max_tokens for chat requests that give none (OpenAI's default is "up to the context").
    default_max_tokens: Annotated[int, Field(ge=1, le=1 << 20)] = 256


# The `model` name that runs the whole cascade when the policy lists no models.
CASCADE_MODEL = "cascade"


class Policy(_Strict):
    tiers: Annotated[list[TierConfig], Field(min_length=1)]
    cascade: CascadeConfig
    scorer: ScorerConfig | None = None
    # Labelled rows (a workload file, usually its train split) that `balanced` and `retrieved`
    # prompts draw demonstrations from and that no-LLM tiers learn from.
    pool: Path | None = None
    # The sentence encoder of retrieval, no-LLM tiers and the scorer (router/encoder_choice.py):
    # `minilm` (all-MiniLM-L6-v2), or `static` (distilled from it and fitted to `pool`: 0.08 ms of
    # CPU per query against int8 MiniLM's 5.1 ms, keeping less of it; bench/results/encoders.json).
    encoder: Literal["minilm", "static"] = "minilm"
    tenants: dict[str, TenantConfig] = {}
    limits: LimitsConfig = LimitsConfig()
    learning: LearningConfig = LearningConfig()
    breaker: BreakerConfig = BreakerConfig()
    cache: CacheConfig = CacheConfig()
    # OpenAI `model` names of the HTTP endpoint and the route each selects. Unset: "cascade" runs
    # the cascade and each tier's name forces that tier.
    models: dict[ModelName, ModelRoute] = {}
    speculative: SpeculativeConfig | None = None

    def tier(self, name: str) -> TierConfig:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(name)

    def model_routes(self) -> dict[str, ModelRoute]:
        """The `models` section, or the default routes when it is empty."""
        if self.models:
            return dict(self.models)
        return {CASCADE_MODEL: ModelRoute(), **{t.name: ModelRoute(force_tier=t.name) for t in self.tiers}}


@dataclass(frozen=True)
class PolicyProblem:
    path: tuple[str | int, ...]
    message: str
    line: int | None


class PolicyError(ConfigError):
    """A policy file that must not be used; str() lists every problem as `file:line: field: message`."""

    def __init__(self, source: str, problems: list[PolicyProblem]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(_format(source, p) for p in problems))


def _format(source: str, problem: PolicyProblem) -> str:
    where = f"{source}:{problem.line}" if problem.line is not None else source
    field = _dotted(problem.path) or "(top level)"
    return f"{where}: {field}: {problem.message}"


def _dotted(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def load_policy(path: str | Path, *, check_files: bool = False) -> Policy:
    """Read, validate and cross-check a policy file; raise PolicyError naming field and line.

    With `check_files`, every file and folder the policy names (see `policy_references`) must
    exist too, as the router and `tierlm up` will read them from the working folder."""
    document = load_yaml_file(path)
    policy = _policy_from(document)
    if check_files:
        problems = [PolicyProblem(ref.path, problem, document.line_of(ref.path))
                    for ref in policy_references(policy) if (problem := ref.problem()) is not None]
        if problems:
            raise PolicyError(document.source, sorted(problems, key=lambda p: p.line or 0))
    return policy


@dataclass(frozen=True)
class PolicyReference:
    """A file or folder a policy names: where (`path` in the document), what it must be."""

    path: tuple[str | int, ...]
    target: Path
    kind: Literal["file", "model folder", "scorer folder"]

    def problem(self) -> str | None:
        """Why the reference is unusable, or None."""
        target = self.target.expanduser()
        where = f"{self.target}" + ("" if target.is_absolute() else f" (from {Path.cwd()})")
        if self.kind == "file":
            return None if target.is_file() else f"no such file: {where}"
        if not target.is_dir():
            return f"no such folder: {where}"
        needed = "config.json" if self.kind == "model folder" else SCORER_FILE
        return None if (target / needed).is_file() else f"not a {self.kind} (no {needed}): {where}"


def is_model_path(model: str) -> bool:
    """Whether a tier's `model` names a folder rather than a registered or no-LLM model."""
    return "/" in model or model.startswith(("~", "."))


def policy_references(policy: Policy) -> list[PolicyReference]:
    """Every file and folder the policy names: the scorer, the pool, tiers' fixed prompts,
    CA files and model folders. Relative paths are read from the working folder."""
    refs = []
    if policy.scorer is not None:
        refs.append(PolicyReference(("scorer", "path"), policy.scorer.path, "scorer folder"))
    if policy.pool is not None:
        refs.append(PolicyReference(("pool",), policy.pool, "file"))
    for index, tier in enumerate(policy.tiers):
        if tier.prompt is not None and tier.prompt.fixed_prompt is not None:
            refs.append(PolicyReference(("tiers", index, "prompt", "fixed_prompt"), tier.prompt.fixed_prompt, "file"))
        if tier.tls is not None and tier.tls.ca_file is not None:
            refs.append(PolicyReference(("tiers", index, "tls", "ca_file"), tier.tls.ca_file, "file"))
        if tier.model is not None and is_model_path(tier.model):
            refs.append(PolicyReference(("tiers", index, "model"), Path(tier.model), "model folder"))
    return refs


def parse_policy(text: str, source: str = "<string>") -> Policy:
    return _policy_from(load_yaml(text, source))


def load_tenants(path: str | Path) -> dict[str, TenantConfig]:
    """Read a tenants file (tenant name -> key_sha256 and budgets), kept apart from the policy
    so keys can live in a Kubernetes Secret while the policy lives in a ConfigMap."""
    document = load_yaml_file(path)
    return validate_document(document, _Tenants, "a mapping of tenant name to key_sha256 and budgets").root


class _Tenants(RootModel[dict[str, TenantConfig]]):
    pass


def _policy_from(document: YamlDocument) -> Policy:
    policy = validate_document(document, Policy, "a mapping with tiers and cascade")
    problems = [PolicyProblem(path, msg, document.line_of(path)) for path, msg in _cross_check(policy)]
    if problems:
        raise PolicyError(document.source, problems)
    return policy


_Model = TypeVar("_Model", bound=BaseModel)


def validate_document(document: YamlDocument, model: type[_Model], expected: str) -> _Model:
    """Validate a parsed YAML file against `model`; PolicyError names each bad field's line."""
    if not isinstance(document.data, dict):
        raise PolicyError(document.source, [PolicyProblem((), f"expected {expected}", 1)])
    try:
        return model.model_validate(document.data)
    except ValidationError as exc:
        problems = [
            PolicyProblem(tuple(err["loc"]), err["msg"], document.line_of(tuple(err["loc"])))
            for err in exc.errors()
        ]
        raise PolicyError(document.source, problems) from None


def _placement_problems(tier: TierConfig, pool: Path | None) -> list[tuple[tuple[str, ...], str]]:
    """Where the tier runs: at an address, or (a no-LLM model over the pool) inside the router."""
    if not tier.in_router:
        return [] if tier.address is not None else [
            (("address",), f"set the tier's address (host:port), or in_router: true for a no-LLM model {list(IN_ROUTER_MODELS)}")]
    problems: list[tuple[tuple[str, ...], str]] = []
    if tier.model not in IN_ROUTER_MODELS:
        problems.append((("model",), f"only a no-LLM model {list(IN_ROUTER_MODELS)} runs in the router, not {tier.model!r}"))
    for field in ("address", "launch", "tls", "api_key_env"):
        if getattr(tier, field) is not None:
            problems.append(((field,), f"an in_router tier is not called over the network: remove {field}"))
    if pool is None:
        problems.append((("in_router",), "an in_router tier learns from the policy's `pool`; set one"))
    return problems


def _cross_check(policy: Policy) -> list[tuple[tuple[str | int, ...], str]]:
    """Rules that span fields, which pydantic's per-field validation cannot see."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    seen: set[str] = set()
    for index, tier in enumerate(policy.tiers):
        if tier.name in seen:
            problems.append((("tiers", index, "name"), f"duplicate tier name {tier.name!r}"))
        seen.add(tier.name)
        prompt = tier.prompt
        if prompt is not None and policy.pool is None and (prompt.selection != "fixed" or (prompt.k and prompt.fixed_prompt is None)):
            problems.append((("tiers", index, "prompt"), f"{prompt.selection!r} selection with k={prompt.k} draws from the policy's `pool`; set one"))
        if tier.launch is not None and tier.launch.runtime != "knn" and tier.model is None:
            problems.append((("tiers", index, "launch", "runtime"), f"runtime {tier.launch.runtime!r} serves the tier's `model`; set one"))
        problems += [(("tiers", index, *path), message) for path, message in _placement_problems(tier, policy.pool)]
    if policy.encoder == "static" and policy.pool is None:
        problems.append((("encoder",), "the static encoder is fitted to the policy's `pool`; set one"))
    order = policy.cascade.order
    for index, name in enumerate(order):
        if name not in seen:
            problems.append((("cascade", "order", index), f"unknown tier {name!r}; tiers are {sorted(seen)}"))
        if name in order[:index]:
            problems.append((("cascade", "order", index), f"tier {name!r} appears twice in the cascade"))
    for model, route in policy.models.items():
        if route.force_tier is not None and route.max_tier is not None:
            problems.append((("models", model), "set force_tier or max_tier, not both"))
        if route.force_tier is not None and route.force_tier not in seen:
            problems.append((("models", model, "force_tier"), f"unknown tier {route.force_tier!r}; tiers are {sorted(seen)}"))
        if route.max_tier is not None and route.max_tier not in order:
            problems.append((("models", model, "max_tier"), f"{route.max_tier!r} is not in cascade.order {order}"))
    speculative = policy.speculative
    if speculative is not None:
        for role in ("draft", "verify"):
            name = getattr(speculative, role)
            if name not in seen:
                problems.append((("speculative", role), f"unknown tier {name!r}; tiers are {sorted(seen)}"))
            elif policy.tier(name).model is None:
                problems.append((("speculative", role), f"tier {name!r} needs a `model`, so the router can check the two tiers' tokenizers match"))
    for name in policy.cascade.thresholds:
        path = ("cascade", "thresholds", name)
        if name not in order:
            problems.append((path, f"threshold for {name!r}, which is not in cascade.order {order}"))
        elif name == order[-1]:
            problems.append((path, f"{name!r} is the last stage, which always accepts; remove its threshold"))
    return problems
