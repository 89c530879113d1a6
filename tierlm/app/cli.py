"""The `tierlm` command line: one entry point, one typer group per area."""

from __future__ import annotations

import importlib
import logging

import typer

import tierlm
from tierlm.app.errors import EPILOG, CommandGroup

# (group name, module) pairs; each module exposes `app`. Modules import their heavy
# dependencies (torch, ray, ...) inside commands, so `tierlm --help` stays fast.
COMMAND_GROUPS: list[tuple[str, str]] = [
    ("policy", "tierlm.app.commands.policy"),
    ("router", "tierlm.app.commands.router"),
    ("cloud", "tierlm.app.commands.cloud"),
    ("edge", "tierlm.app.commands.edge"),
    ("model", "tierlm.app.commands.model"),
    ("eval", "tierlm.app.commands.eval"),
    ("export", "tierlm.app.commands.export"),
    ("knn", "tierlm.app.commands.knn"),
    ("scripted", "tierlm.app.commands.scripted"),
    ("workload", "tierlm.app.commands.workload"),
]

app = typer.Typer(
    name="tierlm",
    help="Cloud-edge LLM inference: compressed edge models, a Ray Serve cloud tier and a learned cascade router.",
    no_args_is_help=True,
    cls=CommandGroup,
    epilog=EPILOG,
    pretty_exceptions_enable=False,
    # Plain click output: an error is one unwrapped line whatever the terminal's width, so it can
    # be read, grepped and tested the same everywhere.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tierlm {tierlm.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    log_level: str = typer.Option("INFO", "--log-level", envvar="TIERLM_LOG_LEVEL", help="Python logging level."),
) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _name, _module in COMMAND_GROUPS:
    app.add_typer(importlib.import_module(_module).app, name=_name)

app.command("ask")(importlib.import_module("tierlm.app.commands.ask").ask)
app.command("health")(importlib.import_module("tierlm.app.commands.health").health)
app.command("compress")(importlib.import_module("tierlm.app.commands.compress").compress)
app.command("up")(importlib.import_module("tierlm.app.commands.up").up)
app.command("demo")(importlib.import_module("tierlm.app.commands.demo").demo)


if __name__ == "__main__":
    app()
