"""The torch engine: the edge node's continuous-batching engine, reused as it is, in a Serve replica.

The fallback where vLLM is unavailable (or cannot run a model); the cloud tier adds
replicas, autoscaling and Serve's plumbing around the same engine the edge node runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tierlm.edge.engine import DecoderEngine
from tierlm.edge.telemetry import PrometheusObserver


def torch_text_engine(path: Path, options: dict[str, Any]) -> DecoderEngine:
    """The edge engine on ``path``; ``options`` are its keyword arguments (threads, max_batch,
    max_queue, ...), with the edge node's defaults for batch and queue."""
    options = {"max_batch": 8, "max_queue": 64, **options}
    return DecoderEngine.from_pretrained(path, observer=PrometheusObserver(), **options)
