"""`tierlm policy ...`: check policy files and make the hashes they store."""

from __future__ import annotations

from pathlib import Path

import typer

from tierlm.auth import hash_key
from tierlm.config import PolicyError, load_policy
from tierlm.yaml_source import YamlSyntaxError

app = typer.Typer(help="Validate cascade policy files and hash tenant API keys.", no_args_is_help=True)


@app.command()
def validate(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Policy YAML to check.")) -> None:
    """Check FILE; print OK, or each problem as file:line: field: message and exit 1.

    A speculative pair's tokenizers are compared too, as the router does when it loads the file."""
    from tierlm.router.serve.speculative import check_tokenizers

    try:
        policy = load_policy(file)
        check_tokenizers(policy)
    except (PolicyError, YamlSyntaxError, ValueError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"OK: {file}: {len(policy.tiers)} tiers, cascade {' -> '.join(policy.cascade.order)}")


@app.command("hash-key")
def hash_key_command(
    key: str = typer.Option(..., prompt=True, hide_input=True, help="The API key to hash (prompted if omitted)."),
) -> None:
    """Print the SHA-256 of an API key, the form `tenants.*.key_sha256` stores."""
    typer.echo(hash_key(key))
