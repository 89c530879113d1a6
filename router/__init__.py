"""The cascade router, in four parts that import one way (study -> serve -> learn -> nollm):

- ``serve/``: the live Router service and everything on its request path.
- ``learn/``: the scorer, its quality metrics, offline cascade evaluation and the optimizer.
- ``study/``: labelled datasets, answer collection and the routing table.
- ``nollm/``: tiers that answer without a language model.

Shared by all four: ``embeddings`` (the MiniLM sentence encoder), ``prompting`` (tier prompt
strategies), ``workload`` and ``judges`` (labelled data and what counts as correct),
``decision`` (the acceptance rule) and ``store`` (ledger, budgets and recorded traffic).
"""
