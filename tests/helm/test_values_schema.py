"""values.schema.json: Helm refuses bad values before anything reaches the cluster, and says
which key is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import json

import helm_python
import jsonschema
import pytest

REJECTED = [
    ({"router": {"replicas": -1}}, "/router/replicas", "minimum"),
    ({"edge": {"replicas": -2}}, "/edge/replicas", "minimum"),
    ({"cloud": {"worker": {"maxReplicas": 0}}}, "/cloud/worker/maxReplicas", "minimum"),
    ({"router": {"replicaCount": 3}}, "/router", "additional properties 'replicaCount' not allowed"),
    ({"edge": {"nodeSelectr": {"a": "b"}}}, "/edge", "additional properties 'nodeSelectr' not allowed"),
    ({"colud": {}}, "", "additional properties 'colud' not allowed"),
    ({"edge": {"kind": "StatefulSet"}}, "/edge/kind", "value must be one of"),
    ({"tls": {"enabled": True}}, "/tls/secretName", "minLength"),
    ({"edge": {"model": {"source": "pvc"}}}, "/edge/model/pvc/claimName", "minLength"),
    # null deletes a default key in Helm: a container without limits is refused.
    ({"router": {"resources": {"limits": None}}}, "/router/resources", "missing property 'limits'"),
    ({"router": {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}}, "/router/resources/requests/cpu", ""),
    ({"securityContext": {"runAsNonRoot": False, "allowPrivilegeEscalation": False}}, "/securityContext/runAsNonRoot", "value must be true"),
    ({"router": {"policy": {"cascade": {"thresholds": {"edge": 1.5}}}}}, "/router/policy/cascade/thresholds/edge", "maximum"),
    ({"router": {"policy": {"tiers": [{"name": "edge", "cost": {"per_call": -1.0}, "timeout_s": 1}]}}}, "/router/policy/tiers/0/cost/per_call", "minimum"),
    ({"router": {"tenants": {"items": {"acme": {"key_sha256": "my-secret-key"}}}}}, "/router/tenants/items/acme/key_sha256", "does not match pattern"),
    ({"cloud": {"upgradeStrategy": "InPlace"}}, "/cloud/upgradeStrategy", "value must be one of"),
    ({"cloud": {"head": {"rayStartParams": {"num-cpus": 0}}}}, "/cloud/head/rayStartParams/num-cpus", "want string"),
    # A SQLite store is one pod's file: budgets would hold per pod only.
    ({"router": {"replicas": 3}}, "/router/replicas", "maximum"),
    ({"router": {"autoscaling": {"enabled": True}}}, "/router/autoscaling/enabled", "value must be false"),
    ({"router": {"store": {"type": "postgres"}}}, "/router/store/postgres/existingSecret", "minLength"),
    ({"router": {"store": {"type": "mysql"}}}, "/router/store/type", "value must be one of"),
]


@pytest.mark.parametrize(("values", "path", "reason"), REJECTED, ids=[p or "/" for _, p, _ in REJECTED])
def test_invalid_values_are_rejected_naming_the_key(chart, values, path, reason):
    with pytest.raises(helm_python.HelmValuesError) as error:
        chart.render(values)
    message = str(error.value)
    assert f"at '{path}'" in message, message
    assert reason in message, message


def test_every_default_value_is_described_by_the_schema(chart):
    """Every key of values.yaml is a schema property (objects closed), so the schema cannot
    drift from the values file unnoticed."""
    schema = helm_python.Chart.load(chart.path).schema

    def resolve(node):
        while "$ref" in node or ("allOf" in node and "properties" not in node and "type" not in node):
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node["allOf"][0]
        return node

    def walk(values, node, path):
        node = resolve(node)
        # Open objects are Kubernetes types (securityContext, affinity) the API server checks.
        if not isinstance(values, dict) or node.get("additionalProperties") is not False:
            return
        for key, value in values.items():
            assert key in node["properties"], f"{path}/{key} is not in values.schema.json"
            walk(value, node["properties"][key], f"{path}/{key}")

    walk(chart.values, schema, "")


def test_the_defaults_and_every_value_set_satisfy_the_schema(chart, case):
    _, values = case
    helm_python.Chart.load(chart.path).validate_schema(chart.merge(chart.values, values))


def test_the_schema_is_a_valid_draft_07_schema(chart):
    """Helm 3 and Helm 4 read draft-07; a schema error would make Helm skip or refuse it."""
    jsonschema.Draft7Validator.check_schema(json.loads((chart.path / "values.schema.json").read_text()))


def test_the_readme_values_table_is_generated_from_the_current_schema_and_values():
    script = Path(__file__).resolve().parents[2] / "helm" / "values_table.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
