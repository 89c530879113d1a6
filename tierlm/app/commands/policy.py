"""`tierlm policy ...`: check policy files and make the hashes they store."""

from __future__ import annotations

from pathlib import Path

import typer

from tierlm.auth import hash_key
from tierlm.config import load_policy

app = typer.Typer(help="Validate cascade policy files and hash tenant API keys.", no_args_is_help=True)


@app.command()
def validate(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Policy YAML to check.")) -> None:
    """Check FILE and the files it names (scorer folder, pool workload, fixed prompts, CA files,
    model folders; relative paths from the working folder, as the router reads them), and that a
    speculative pair's tokenizers match, as the router does when it loads the file. Print OK, or
    each problem as file:line: field: message and exit 3."""
    from tierlm.router.serve.speculative import check_tokenizers
    from tierlm.router.workload import load_workload

    policy = load_policy(file, check_files=True)
    if policy.pool is not None:
        load_workload(policy.pool)  # a bad row is named by the pool's own file:line
    check_tokenizers(policy)
    typer.echo(f"OK: {file}: {len(policy.tiers)} tiers, cascade {' -> '.join(policy.cascade.order)}")


@app.command("hash-key")
def hash_key_command(
    key: str = typer.Option(..., prompt=True, hide_input=True, help="The API key to hash (prompted if omitted)."),
) -> None:
    """Print the SHA-256 of an API key, the form `tenants.*.key_sha256` stores."""
    typer.echo(hash_key(key))
