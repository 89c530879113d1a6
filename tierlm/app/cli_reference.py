"""The CLI reference (docs/cli.md), generated from the command line itself.

Every command's `--help`, rendered at a fixed width so the page is the same on every machine;
tests/cli/test_cli_reference.py fails when the committed page differs from what this prints.
Regenerate with: python -m tierlm.app.cli_reference > docs/cli.md
"""

from __future__ import annotations

from collections.abc import Iterator

import typer

from tierlm.app.cli import app

# Wide enough for the option tables, narrow enough to read on a phone in a code block.
WIDTH = 100
HEADER = """# CLI reference

Every `tierlm` command's `--help`, generated from the command line itself:
`python -m tierlm.app.cli_reference > docs/cli.md` (a test fails when this page is stale).
Errors are one line on stderr, `Error: <what went wrong>`, with the exit codes listed under `tierlm`.
"""


def _help_pages(command, ctx) -> Iterator[tuple[str, str]]:
    """(command path, help text) for `command` and every subcommand below it, in CLI order."""
    yield ctx.command_path, command.get_help(ctx).rstrip()
    for name in getattr(command, "list_commands", lambda _: [])(ctx):
        sub = command.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        sub_ctx = sub.context_class(sub, info_name=name, parent=ctx, terminal_width=WIDTH, max_content_width=WIDTH)
        yield from _help_pages(sub, sub_ctx)


def render() -> str:
    """The whole page."""
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="tierlm", terminal_width=WIDTH, max_content_width=WIDTH)
    sections = [f"## {path}\n\n```text\n{text}\n```\n" for path, text in _help_pages(root, ctx)]
    return "\n".join([HEADER, *sections])


if __name__ == "__main__":
    print(render(), end="")
