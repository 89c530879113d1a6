"""CLI command groups; each module exposes a typer app that tierlm.app.cli mounts under its name."""
