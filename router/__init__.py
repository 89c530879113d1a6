"""The cascade router, in four parts that import one way (study -> serve -> learn -> nollm):

- ``serve/``: the live Router service and everything on its request path.
- ``learn/``: the scorer, its quality metrics, offline cascade evaluation and the optimizer.
- ``study/``: labelled datasets, answer collection and the routing table.
- ``nollm/``: tiers that answer without a language model.

``embeddings`` (the MiniLM sentence encoder) and ``prompting`` (tier prompt strategies) are
shared by all four.
"""
