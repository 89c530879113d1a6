"""docs/cli.md is what the command line prints about itself."""

from __future__ import annotations

from pathlib import Path

from tierlm.app.cli_reference import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_the_committed_cli_reference_is_current() -> None:
    assert PAGE.read_text() == render(), "regenerate: python -m tierlm.app.cli_reference > docs/cli.md"


def test_it_covers_every_command_and_the_exit_codes() -> None:
    page = render()
    for command in ("## tierlm ask", "## tierlm router serve", "## tierlm router ledger", "## tierlm policy validate",
                    "## tierlm edge serve", "## tierlm knn serve", "## tierlm demo", "## tierlm workload schema"):
        assert command in page
    assert "Exit codes:" in page and "5  a port could not be bound" in page
