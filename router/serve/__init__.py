"""Live serving: the Router service, the cascade runtime, tier clients, budgets, ledger, cache,
telemetry and the OpenAI-compatible HTTP front."""
