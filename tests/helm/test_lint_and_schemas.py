"""`helm lint --strict` and strict schema validation of every rendered object, for each value set
of the matrix (conftest.MATRIX)."""

from __future__ import annotations

import helm_python
import pytest

# What each value set must render, so a template that silently renders nothing is caught too.
BASE_KINDS = {"ServiceAccount", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "Pod"}
# What each value set renders beyond the base kinds (and which base kinds it drops).
EXTRA_KINDS = {
    "edge-daemonset": {"DaemonSet"},
    "tls-networkpolicy-monitoring": {"ServiceMonitor", "PodMonitor"},
    "ingress-and-gateway-routes": {"Ingress", "HTTPRoute", "GRPCRoute"},
    "edge-autoscaling": {"HorizontalPodAutoscaler"},
    "replicas-autoscaled-on-postgres": {"HorizontalPodAutoscaler"},
}
DROPPED_KINDS = {"no-auth-no-networkpolicy": {"NetworkPolicy"}}


def test_lint_strict_passes_with_defaults(chart):
    report = helm_python.lint(chart.path, strict=True, kube_version=f"v{chart.KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_lint_strict_passes_for_each_value_set(chart, case):
    _, values = case
    report = helm_python.lint(chart.path, values, strict=True, kube_version=f"v{chart.KUBE_VERSION}")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_every_rendered_object_passes_strict_schema_validation(chart, case):
    _, values = case
    objects = chart.render(values)
    assert objects
    for obj in objects:
        chart.validate(obj)


def test_each_value_set_renders_the_objects_it_asks_for(chart, case):
    name, values = case
    kinds = {o["kind"] for o in chart.render(values)}
    expected = (BASE_KINDS | EXTRA_KINDS.get(name, set())) - DROPPED_KINDS.get(name, set())
    if name != "cloud-disabled":
        expected.add("RayService")
    assert kinds == expected


def test_strict_validation_rejects_an_unknown_field(chart, defaults):
    """The validators are strict for real: a misspelt field in a rendered object fails."""
    deployment = chart.one(defaults, "Deployment", chart.ROUTER)
    broken = chart.merge(deployment, {"spec": {"template": {"spec": {"nodeSelectr": {"a": "b"}}}}})
    with pytest.raises(Exception, match="nodeSelectr"):
        chart.validate(broken)
    rayservice = chart.one(defaults, "RayService")
    broken = chart.merge(rayservice, {"spec": {"rayClusterConfig": {"headGroupSpec": {"rayStartParam": {}}}}})
    with pytest.raises(AssertionError, match="rayStartParam"):
        chart.validate(broken)
