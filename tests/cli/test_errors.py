"""Every operator error is one `Error:` line on stderr, no traceback, and the exit code of its kind.

Commands that install signal handlers (`up`, `cloud serve`) run in a child process; the others
in this one. Ports in use are held by a listening socket for the length of a test.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support.ports import free_port
from tierlm.app.cli import app
from tierlm.app.errors import ExitCode
from tierlm.edge import catalog

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "examples" / "policy.yaml"  # two remote tiers, no files: the router alone starts in a second


def error_line(stderr: str) -> str:
    """The failed command's one `Error:` line; nothing may look like a traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert isinstance(result.exception, SystemExit), result.exception  # no exception but a clean exit
    return result.exit_code, error_line(result.stderr)


def run(*args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "tierlm.app.cli", *args], capture_output=True, text=True, timeout=120)
    return done.returncode, error_line(done.stderr)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process (here: a plain socket) is listening on."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        yield holder.getsockname()[1]


def test_the_exit_codes_are_distinct_and_listed_in_the_help() -> None:
    assert len({code.value for code in ExitCode}) == len(ExitCode)
    help_text = CliRunner().invoke(app, ["--help"]).stdout
    for code in ExitCode:
        assert f"{code.value}  {code.meaning}" in help_text


# ---- ports in use, ports out of range ----

def test_grpc_port_in_use(tmp_path: Path, busy_port: int) -> None:
    code, error = invoke("router", "serve", "--policy", str(POLICY), "--store", str(tmp_path / "l.sqlite"),
                         "--port", str(busy_port))
    assert code == ExitCode.PORT_UNAVAILABLE
    assert error == f"Error: cannot listen on 127.0.0.1:{busy_port} (gRPC): Address already in use"


def test_http_port_in_use(tmp_path: Path, busy_port: int) -> None:
    code, error = invoke("router", "serve", "--policy", str(POLICY), "--store", str(tmp_path / "l.sqlite"),
                         "--port", "0", "--http-port", str(busy_port))
    assert code == ExitCode.PORT_UNAVAILABLE
    assert error == f"Error: cannot listen on 127.0.0.1:{busy_port} (OpenAI HTTP): Address already in use"


def test_metrics_port_in_use(tmp_path: Path, busy_port: int) -> None:
    code, error = invoke("router", "serve", "--policy", str(POLICY), "--store", str(tmp_path / "l.sqlite"),
                         "--port", "0", "--metrics-port", str(busy_port))
    assert code == ExitCode.PORT_UNAVAILABLE
    assert error == f"Error: cannot listen on 127.0.0.1:{busy_port} (metrics): Address already in use"


def test_a_stack_port_in_use_stops_tierlm_up_before_it_starts_anything(tmp_path: Path, busy_port: int) -> None:
    code, error = run("up", "--policy", str(POLICY), "--port", str(busy_port), "--run-dir", str(tmp_path / "run"))
    assert code == ExitCode.PORT_UNAVAILABLE
    assert error == f"Error: cannot listen on 127.0.0.1:{busy_port} (router): Address already in use"
    assert not (tmp_path / "run" / "logs").exists()  # no service was started


def test_a_serve_port_in_use_stops_the_cloud_tier_before_ray_starts(tmp_path: Path, busy_port: int) -> None:
    config = tmp_path / "cloud.yaml"
    config.write_text(f"grpc_port: {busy_port}\nhttp_port: {free_port()}\nmodels: [{{name: m, path: /models/m, engine: torch}}]\n")
    code, error = run("cloud", "serve", "--config", str(config))
    assert code == ExitCode.PORT_UNAVAILABLE
    assert error == f"Error: cannot listen on 127.0.0.1:{busy_port} (Serve gRPC): Address already in use"


@pytest.mark.parametrize("command", [
    ["router", "serve", "--policy", str(POLICY), "--port"],
    ["router", "serve", "--policy", str(POLICY), "--http-port"],
    ["edge", "serve", "--model", str(REPO), "--port"],
    ["knn", "serve", "--pool", str(REPO / "data" / "workloads" / "headlines" / "train.jsonl"), "--port"],
    ["up", "--policy", str(POLICY), "--port"],
    ["router", "serve", "--policy", str(POLICY), "--metrics-port"],
])
def test_a_port_out_of_range_is_refused_not_wrapped(command: list[str]) -> None:
    code, error = invoke(*command, "70000")
    assert code == ExitCode.USAGE
    assert error.startswith(f"Error: Invalid value for '{command[-1]}': ") and "65535" in error


def test_an_unknown_sentence_encoder_is_refused() -> None:
    code, error = invoke("knn", "serve", "--pool", str(REPO / "data" / "workloads" / "headlines" / "train.jsonl"),
                         "--encoder", "bert", "--port", "0", "--no-auth")
    assert code == ExitCode.USAGE
    assert error == "Error: Invalid value for --encoder: 'bert' is not one of ['minilm', 'static']"


# ---- missing scorer, model, artifact ----

def test_missing_scorer(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.read_text() + f"scorer: {{path: {tmp_path / 'scorer'}}}\n")
    code, error = invoke("router", "serve", "--policy", str(policy), "--store", str(tmp_path / "l.sqlite"), "--port", "0")
    assert code == ExitCode.MISSING
    assert error == f"Error: no scorer in {tmp_path / 'scorer'} (no scorer.json): train one with `tierlm router train`"


def test_unknown_model_name() -> None:
    code, error = invoke("model", "prepare", "gemma-4")
    assert code == ExitCode.MISSING
    assert error == "Error: unknown model 'gemma-4'; known: gemma-3-270m, smollm2-135m"


def test_model_package_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = catalog.ModelSpec(name="absent", description="", family="llama", quantization="Q4_1",
                             install="pip install absent-gguf==1.0", module="tierlm_absent_package", gguf_name="absent.gguf",
                             locate=catalog.MODELS["smollm2-135m"].locate)
    monkeypatch.setitem(catalog.MODELS, spec.name, spec)
    code, error = invoke("model", "prepare", "absent", "--cache-dir", str(tmp_path))
    assert code == ExitCode.MISSING
    assert error == "Error: model 'absent' is not installed; run: pip install absent-gguf==1.0"


def test_a_folder_that_holds_no_model(tmp_path: Path) -> None:
    code, error = invoke("edge", "serve", "--model", str(tmp_path), "--port", "0", "--no-auth")
    assert code == ExitCode.MISSING
    assert error == (f"Error: {tmp_path}: not a model folder (no config.json); "
                     "give an HF folder or a `tierlm compress` artifact")
    # Refused before the process committed to onnxruntime's shared pool (it would refuse every
    # later session with a pool of its own: the router's encoder, the kernels' tests).
    from tierlm.kernels.ops import ort_nbits

    assert ort_nbits._shared_pool_threads is None


def test_a_policy_tier_whose_model_folder_is_missing(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("tiers:\n  - {name: edge, address: '127.0.0.1:1', model: ./nowhere, launch: {runtime: edge}}\n"
                      "cascade: {order: [edge]}\n")
    code, error = run("up", "--policy", str(policy), "--run-dir", str(tmp_path / "run"))
    assert code == ExitCode.MISSING
    assert error == "Error: tier 'edge': model './nowhere' is neither a known model name nor a folder"


def test_a_path_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    code, error = invoke("edge", "serve", "--model", str(tmp_path / "nowhere"), "--no-auth")
    assert code == ExitCode.USAGE
    assert error == f"Error: Invalid value for '--model': path '{tmp_path / 'nowhere'}' does not exist."


# ---- invalid configuration files ----

def test_an_invalid_policy_stops_the_router(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.read_text().replace("timeout_s: 2.0", "timeout_secs: 2.0"))
    code, error = invoke("router", "serve", "--policy", str(policy), "--store", str(tmp_path / "l.sqlite"), "--port", "0")
    assert code == ExitCode.BAD_CONFIG
    assert error == f"Error: {policy}:7: tiers[0].timeout_secs: Extra inputs are not permitted"


def test_an_invalid_cloud_config(tmp_path: Path) -> None:
    config = tmp_path / "cloud.yaml"
    config.write_text("grpc_port: 9000\nmodels: []\n")
    code, error = run("cloud", "serve", "--config", str(config))
    assert code == ExitCode.BAD_CONFIG
    assert error.startswith(f"Error: {config}:2: models: List should have at least 1 item")


# ---- conflicting flags ----

@pytest.mark.parametrize(("args", "message"), [
    (["ask", "--force-tier", "edge", "--max-tier", "cloud", "hi"],
     "Error: --force-tier and --max-tier conflict: a forced tier is the only one called"),
    (["ask", "--json", "--stream", "hi"],
     "Error: --json and --stream conflict: --json prints the whole answer once it is complete"),
    (["router", "fit", "--budget", "1", "--budget-share", "0.5", "--policy", str(POLICY), "--answers", str(POLICY),
      "--scorer", str(REPO), "--out", "x.yaml"],
     "Error: Invalid value for --budget: give exactly one of --budget and --budget-share"),
    (["edge", "serve", "--model", str(REPO), "--no-auth", "--draft-vocab-text", str(REPO / "README.md")],
     "Error: --draft-vocab-text needs --verifier (it shapes what this node drafts)"),
])
def test_conflicting_flags(args: list[str], message: str) -> None:
    code, error = invoke(*args)
    assert code == ExitCode.USAGE
    assert error == message


def test_http_and_workers_conflict() -> None:
    code, error = invoke("router", "serve", "--policy", str(POLICY), "--http-port", "0", "--workers", "2")
    assert code == ExitCode.USAGE
    assert error == ("Error: --http-port and --workers conflict: the OpenAI HTTP endpoint serves from one process; "
                     "run it with --workers 1")


# ---- the router out of reach ----

def test_ask_a_router_that_is_not_there() -> None:
    code, error = invoke("ask", "--router", f"127.0.0.1:{free_port()}", "hi")
    assert code == ExitCode.UNREACHABLE
    assert error.startswith("Error: UNAVAILABLE: ") and "127.0.0.1" in error
