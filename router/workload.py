"""Workloads: labelled queries as JSON lines, what every routing study and policy fit starts from.

One JSON object per line (``docs/workload.schema.json`` is the schema; ``tierlm workload check``
validates a file)::

    {"id": "q1", "prompt": "Gold rises as dollar slips", "reference": "up",
     "choices": ["up", "down", "neutral", "none"], "split": "train"}
    {"id": "q2", "prompt": "Context: ... Question: Who wrote it?", "reference": ["Bach", "J. S. Bach"],
     "judge": "token_f1"}
    {"id": "q3", "messages": [{"role": "user", "content": "2 + 2?"}], "reference": "4",
     "judge": {"name": "numeric", "tolerance": 0}}

- ``id``: unique in the file.
- ``prompt`` (text) or ``messages`` (a chat, ending with the user's turn): exactly one.
- ``reference``: an acceptable answer, or a list of them; none may be empty.
- ``choices`` (optional): the labels a tier scores (label-choice scoring); the judge then
  defaults to ``choice``, else to ``normalized`` (exact match after normalisation).
- ``judge`` (optional): a judge name or ``{"name": ..., options}`` (:mod:`tierlm.router.judges`).
- ``split`` (optional): which split the row belongs to; rows without one belong to the split
  named by the file (``train.jsonl`` holds ``train``).
- ``max_tokens`` (optional): the longest answer a tier may generate for a free-form row.
- ``metadata`` (optional): anything else, kept and ignored.

Every problem in a file is reported at once, each as ``file:line: field: message``, and nothing
is returned from a file with a problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tierlm.errors import ConfigError
from tierlm.router.judges import JUDGES, Judge

NonEmpty = Annotated[str, Field(min_length=1)]


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str


class JudgeSpec(BaseModel):
    """A judge by name with its options, e.g. ``{"name": "token_f1", "threshold": 0.6}``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class WorkloadRow(BaseModel):
    """One labelled query; see the module docstring for every field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: NonEmpty
    prompt: str | None = None
    messages: tuple[ChatTurn, ...] | None = None
    reference: tuple[str, ...] = Field(description="an acceptable answer, or a list of them")
    choices: tuple[NonEmpty, ...] | None = None
    judge: JudgeSpec | None = None
    split: NonEmpty | None = None
    max_tokens: Annotated[int, Field(ge=1, le=4096)] | None = None
    metadata: dict[str, Any] = {}

    @field_validator("reference", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("judge", mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("reference")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one reference answer")
        if any(not r.strip() for r in value):
            raise ValueError("a reference answer is empty")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> WorkloadRow:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` and `messages`")
        if self.messages is not None and (not self.messages or self.messages[-1].role != "user"):
            raise ValueError("`messages` must end with a user turn")
        if self.choices is not None and len(set(self.choices)) != len(self.choices):
            raise ValueError(f"`choices` has duplicates: {list(self.choices)}")
        return self

    @property
    def query(self) -> str:
        """The text a prompt strategy wraps and the encoder embeds: the prompt, or the last user turn."""
        if self.prompt is not None:
            return self.prompt
        assert self.messages is not None
        return self.messages[-1].content

    @property
    def label(self) -> str:
        """The first reference: the answer a demonstration shows."""
        return self.reference[0]

    @property
    def judge_spec(self) -> JudgeSpec:
        if self.judge is not None:
            return self.judge
        return JudgeSpec(name="choice" if self.choices else "normalized")


@dataclass(frozen=True)
class WorkloadProblem:
    line: int
    field: str
    message: str


class WorkloadError(ConfigError):
    """A workload file that must not be used; str() lists every problem as ``file:line: field: message``."""

    def __init__(self, source: str, problems: Sequence[WorkloadProblem]):
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}:{p.line}: {p.field}: {p.message}" for p in self.problems))


@dataclass(frozen=True)
class Workload:
    """The rows of one workload file, in file order, with the judges they name."""

    source: Path
    rows: tuple[WorkloadRow, ...]

    @property
    def default_split(self) -> str:
        return self.source.stem

    def split_of(self, row: WorkloadRow) -> str:
        return row.split or self.default_split

    def split(self, name: str) -> list[WorkloadRow]:
        """The rows of split ``name``, in file order."""
        return [row for row in self.rows if self.split_of(row) == name]

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(self.split_of(row) for row in self.rows))

    def judge_for(self, row: WorkloadRow) -> Judge:
        return self._judges[_judge_key(row.judge_spec)]

    @cached_property
    def _judges(self) -> dict[str, Judge]:
        specs = {_judge_key(row.judge_spec): row.judge_spec for row in self.rows}
        return {key: JUDGES.build(spec.name, **spec.options) for key, spec in specs.items()}

    def __iter__(self) -> Iterator[WorkloadRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def _judge_key(spec: JudgeSpec) -> str:
    return json.dumps({"name": spec.name, **spec.options}, sort_keys=True)


def load_workload(path: str | Path) -> Workload:
    """Read and validate a workload file; :class:`WorkloadError` lists every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise WorkloadError(str(path), [WorkloadProblem(1, "(file)", f"not UTF-8 text: {exc}")]) from None
    return parse_workload(text, path)


def parse_workload(text: str, source: Path) -> Workload:
    rows: list[WorkloadRow] = []
    problems: list[WorkloadProblem] = []
    first_line_of: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row = _parse_row(line, number, problems)
        if row is None:
            continue
        if row.id in first_line_of:
            problems.append(WorkloadProblem(number, "id", f"duplicate id {row.id!r} (first on line {first_line_of[row.id]})"))
            continue
        first_line_of[row.id] = number
        problem = _judge_problem(row.judge_spec)
        if problem is not None:
            problems.append(WorkloadProblem(number, "judge", problem))
            continue
        rows.append(row)
    if not rows and not problems:
        problems.append(WorkloadProblem(1, "(file)", "no rows"))
    if problems:
        raise WorkloadError(str(source), problems)
    return Workload(source, tuple(rows))


def _parse_row(line: str, number: int, problems: list[WorkloadProblem]) -> WorkloadRow | None:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        problems.append(WorkloadProblem(number, "(line)", f"invalid JSON: {exc.msg} at column {exc.colno}"))
        return None
    if not isinstance(data, dict):
        problems.append(WorkloadProblem(number, "(line)", f"expected a JSON object, got {type(data).__name__}"))
        return None
    try:
        return WorkloadRow.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "(row)"
            problems.append(WorkloadProblem(number, field, error["msg"]))
        return None


def _judge_problem(spec: JudgeSpec) -> str | None:
    if spec.name not in JUDGES:
        return f"unknown judge {spec.name!r}; known: {JUDGES.names()}"
    try:
        JUDGES.build(spec.name, **spec.options)
    except (TypeError, ValueError) as exc:
        return f"bad options for judge {spec.name!r}: {exc}"
    return None


def json_schema() -> dict[str, Any]:
    """The JSON schema of one workload line (written to ``docs/workload.schema.json``)."""
    schema = WorkloadRow.model_json_schema()
    schema["title"] = "tierlm workload row"
    schema["description"] = "One line of a tierlm workload file (JSON lines); see `tierlm workload check`."
    return schema


def write_workload(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write rows (plain dicts) as a workload file, validating each first."""
    lines = [WorkloadRow.model_validate(row).model_dump_json(exclude_none=True, exclude_defaults=True) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
