"""CLI command groups; each module exposes ``app``, registered by ``tierlm.cli``."""
