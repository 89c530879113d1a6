"""Policy files for tests: two scripted tiers (edge, then cloud) and the tenants given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tierlm.auth import hash_key

EDGE_COST = {"per_call": 0.001}
CLOUD_COST = {"per_call": 0.01, "per_output_token": 0.001}


def two_tier_policy(edge_port: int, cloud_port: int, keys: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """edge then cloud on 127.0.0.1; `keys` maps tenant name -> API key (stored hashed)."""
    policy: dict[str, Any] = {
        "tiers": [
            {"name": "edge", "address": f"127.0.0.1:{edge_port}", "cost": EDGE_COST, "timeout_s": 2.0},
            {"name": "cloud", "address": f"127.0.0.1:{cloud_port}", "cost": CLOUD_COST, "timeout_s": 5.0},
        ],
        "cascade": {"order": ["edge", "cloud"], "thresholds": {"edge": 0.5}},
        **extra,
    }
    if keys:
        policy["tenants"] = tenants(keys)
    return policy


def tenants(keys: dict[str, str], **budgets: Any) -> dict[str, Any]:
    return {name: {"key_sha256": hash_key(key), **budgets} for name, key in keys.items()}


def write(path: Path, document: Any) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path
