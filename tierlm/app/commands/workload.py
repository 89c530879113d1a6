"""`tierlm workload`: check a workload file, or print the JSON schema of its rows."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Workload files: labelled queries as JSON lines.", no_args_is_help=True)


@app.command()
def check(path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Workload file (JSON lines).")) -> None:
    """Validate a workload file: every problem is printed as file:line: field: message (exit 3)."""
    from tierlm.router.workload import load_workload

    workload = load_workload(path)
    splits = ", ".join(f"{name} {len(workload.split(name))}" for name in workload.splits)
    judges = sorted({row.judge_spec.name for row in workload})
    typer.echo(f"{path}: {len(workload)} rows ({splits}); judges: {', '.join(judges)}")


@app.command()
def schema() -> None:
    """Print the JSON schema of one workload row (docs/workload.schema.json)."""
    from tierlm.router.workload import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))
