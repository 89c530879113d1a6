"""#20.6: the router's store in the chart. SQLite (the default) is one pod's file, so the chart
runs one router with it; PostgreSQL is shared by every replica, its DSN read from an existing
Secret (never a value)."""

from __future__ import annotations


def router_pod(chart, objects) -> dict:
    return chart.one(objects, "Deployment", chart.ROUTER)["spec"]["template"]["spec"]


def test_sqlite_by_default_one_router_its_file_in_the_pod(chart, defaults):
    deployment = chart.one(defaults, "Deployment", chart.ROUTER)
    assert deployment["spec"]["replicas"] == 1 and not chart.find(defaults, "HorizontalPodAutoscaler", chart.ROUTER)
    pod = router_pod(chart, defaults)
    args = pod["containers"][0]["args"]
    assert args[args.index("--store") + 1] == "/var/lib/tierlm/ledger.sqlite"
    (state,) = [v for v in pod["volumes"] if v["name"] == "state"]
    assert "emptyDir" in state
    notes = chart.render_files()["tierlm/templates/NOTES.txt"]
    assert "the ledger is lost with the pod" in notes and "router.store.type=postgres" in notes


def test_sqlite_on_a_claim_restarts_rather_than_sharing_the_file(chart):
    objects = chart.render(chart.MATRIX["sqlite-on-a-volume"])
    deployment = chart.one(objects, "Deployment", chart.ROUTER)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (state,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "state"]
    assert state["persistentVolumeClaim"] == {"claimName": "router-ledger"}


def test_postgres_dsn_comes_from_the_secret_and_replicas_scale(chart):
    values = chart.MATRIX["replicas-autoscaled-on-postgres"]
    objects = chart.render(values)
    container = router_pod(chart, objects)["containers"][0]
    assert "--store" not in container["args"]  # `router serve` reads $TIERLM_STORE
    (dsn,) = [e for e in container["env"] if e["name"] == "TIERLM_STORE"]
    assert dsn["valueFrom"]["secretKeyRef"] == {"name": "tierlm-store", "key": "dsn"}
    assert chart.one(objects, "HorizontalPodAutoscaler", chart.ROUTER)["spec"]["maxReplicas"] == 10
    rendered = "".join(chart.render_files(values).values())
    assert "postgresql://" not in rendered
    assert "shared by every router replica" in chart.render_files(values)["tierlm/templates/NOTES.txt"]
