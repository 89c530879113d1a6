from tierlm.v1 import generator_pb2 as _generator_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TierOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_OUTCOME_UNSPECIFIED: _ClassVar[TierOutcome]
    TIER_OUTCOME_ACCEPTED: _ClassVar[TierOutcome]
    TIER_OUTCOME_LOW_SCORE: _ClassVar[TierOutcome]
    TIER_OUTCOME_FAILED: _ClassVar[TierOutcome]
    TIER_OUTCOME_SKIPPED: _ClassVar[TierOutcome]
TIER_OUTCOME_UNSPECIFIED: TierOutcome
TIER_OUTCOME_ACCEPTED: TierOutcome
TIER_OUTCOME_LOW_SCORE: TierOutcome
TIER_OUTCOME_FAILED: TierOutcome
TIER_OUTCOME_SKIPPED: TierOutcome

class RoutingOptions(_message.Message):
    __slots__ = ("budget_per_query", "max_tier", "force_tier")
    BUDGET_PER_QUERY_FIELD_NUMBER: _ClassVar[int]
    MAX_TIER_FIELD_NUMBER: _ClassVar[int]
    FORCE_TIER_FIELD_NUMBER: _ClassVar[int]
    budget_per_query: float
    max_tier: str
    force_tier: str
    def __init__(self, budget_per_query: _Optional[float] = ..., max_tier: _Optional[str] = ..., force_tier: _Optional[str] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("request", "routing")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    request: _generator_pb2.GenerateRequest
    routing: RoutingOptions
    def __init__(self, request: _Optional[_Union[_generator_pb2.GenerateRequest, _Mapping]] = ..., routing: _Optional[_Union[RoutingOptions, _Mapping]] = ...) -> None: ...

class TierAttempt(_message.Message):
    __slots__ = ("tier", "outcome", "score", "has_score", "threshold", "cost", "latency_ms", "reason", "speculative")
    TIER_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HAS_SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_FIELD_NUMBER: _ClassVar[int]
    tier: str
    outcome: TierOutcome
    score: float
    has_score: bool
    threshold: float
    cost: float
    latency_ms: float
    reason: str
    speculative: SpeculativeAttempt
    def __init__(self, tier: _Optional[str] = ..., outcome: _Optional[_Union[TierOutcome, str]] = ..., score: _Optional[float] = ..., has_score: _Optional[bool] = ..., threshold: _Optional[float] = ..., cost: _Optional[float] = ..., latency_ms: _Optional[float] = ..., reason: _Optional[str] = ..., speculative: _Optional[_Union[SpeculativeAttempt, _Mapping]] = ...) -> None: ...

class SpeculativeAttempt(_message.Message):
    __slots__ = ("draft_tier", "stats", "fallback_tier")
    DRAFT_TIER_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_TIER_FIELD_NUMBER: _ClassVar[int]
    draft_tier: str
    stats: _generator_pb2.SpeculativeStats
    fallback_tier: str
    def __init__(self, draft_tier: _Optional[str] = ..., stats: _Optional[_Union[_generator_pb2.SpeculativeStats, _Mapping]] = ..., fallback_tier: _Optional[str] = ...) -> None: ...

class RoutingTrace(_message.Message):
    __slots__ = ("attempts", "accepted_tier", "total_cost", "overhead_ms")
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TIER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_FIELD_NUMBER: _ClassVar[int]
    OVERHEAD_MS_FIELD_NUMBER: _ClassVar[int]
    attempts: _containers.RepeatedCompositeFieldContainer[TierAttempt]
    accepted_tier: str
    total_cost: float
    overhead_ms: float
    def __init__(self, attempts: _Optional[_Iterable[_Union[TierAttempt, _Mapping]]] = ..., accepted_tier: _Optional[str] = ..., total_cost: _Optional[float] = ..., overhead_ms: _Optional[float] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("answer", "trace")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    answer: _generator_pb2.GenerateResponse
    trace: RoutingTrace
    def __init__(self, answer: _Optional[_Union[_generator_pb2.GenerateResponse, _Mapping]] = ..., trace: _Optional[_Union[RoutingTrace, _Mapping]] = ...) -> None: ...

class UsageRequest(_message.Message):
    __slots__ = ("tenant", "since_unix_s")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    since_unix_s: float
    def __init__(self, tenant: _Optional[str] = ..., since_unix_s: _Optional[float] = ...) -> None: ...

class UsageResponse(_message.Message):
    __slots__ = ("tenant", "requests", "answered", "cost", "prompt_tokens", "completion_tokens", "answers_by_tier")
    class AnswersByTierEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_BY_TIER_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    requests: int
    answered: int
    cost: float
    prompt_tokens: int
    completion_tokens: int
    answers_by_tier: _containers.ScalarMap[str, int]
    def __init__(self, tenant: _Optional[str] = ..., requests: _Optional[int] = ..., answered: _Optional[int] = ..., cost: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., answers_by_tier: _Optional[_Mapping[str, int]] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("request_id", "correct", "score", "reference")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    correct: bool
    score: float
    reference: str
    def __init__(self, request_id: _Optional[str] = ..., correct: _Optional[bool] = ..., score: _Optional[float] = ..., reference: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("request_id", "stored")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    stored: bool
    def __init__(self, request_id: _Optional[str] = ..., stored: _Optional[bool] = ...) -> None: ...
