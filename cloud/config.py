"""The cloud tier's configuration file (cloud.yaml), validated like Ray Serve's own configs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tierlm.config import validate_document  # one line-numbered error path for every YAML file
from tierlm.yaml_source import load_yaml_file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingConfig(_Strict):
    """Ray Serve's autoscaling knobs, with its names."""

    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)] = 1
    target_ongoing_requests: Annotated[float, Field(gt=0)] = 8.0
    upscale_delay_s: Annotated[float, Field(ge=0)] = 5.0
    downscale_delay_s: Annotated[float, Field(ge=0)] = 60.0

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


class ReplicaResources(_Strict):
    num_cpus: Annotated[float, Field(ge=0)] = 1.0
    num_gpus: Annotated[float, Field(ge=0)] = 0.0


class VerifyConfig(_Strict):
    """Serve the Verify rpc for edge drafters (speculative decoding, docs/speculative.md).

    The torch engine verifies on its own copy of the model with ``max_sessions`` KV-cache
    sessions, an idle one dropped after ``session_ttl_s``; vLLM verifies greedy rounds on its
    own engine, reusing the context through its automatic prefix caching.
    """

    max_sessions: Annotated[int, Field(ge=1)] = 16
    session_ttl_s: Annotated[float, Field(gt=0)] = 300.0


class ModelDeploymentConfig(_Strict):
    """One model, served by one Serve deployment with its own replicas."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    # HF folder, GGUF file or tierlm artifact (torch engine); for vLLM an HF folder or an
    # artifact's compressed-tensors export (`tierlm export vllm`). `~` is expanded on the replica.
    path: str
    engine: Literal["vllm", "torch"] = "vllm"
    # Passed to the engine: vLLM engine args (dtype, max_model_len, enforce_eager, ...) for
    # "vllm"; threads, max_batch, max_queue for "torch".
    engine_options: dict[str, Any] = {}
    # Set to serve Verify for edge drafters; unset, Verify answers UNIMPLEMENTED.
    verify: VerifyConfig | None = None
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    max_ongoing_requests: Annotated[int, Field(gt=0)] = 32
    resources: ReplicaResources = ReplicaResources()
    health_check_period_s: Annotated[float, Field(gt=0)] = 10.0
    graceful_shutdown_timeout_s: Annotated[float, Field(ge=0)] = 30.0


class CloudConfig(_Strict):
    # The tier name answers carry (the router's policy names it too).
    tier_name: str = "cloud"
    models: Annotated[list[ModelDeploymentConfig], Field(min_length=1)]
    grpc_port: Annotated[int, Field(ge=0, le=65535)] = 9000
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8000
    host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _unique_names(self) -> CloudConfig:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate model names {duplicates}")
        return self


def load_cloud_config(path: str | Path) -> CloudConfig:
    """Read cloud.yaml; PolicyError names the field and line of every problem."""
    return validate_document(load_yaml_file(path), CloudConfig, "a mapping with models")
