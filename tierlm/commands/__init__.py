"""CLI command groups; each module exposes a typer app that tierlm.cli mounts under its name."""
