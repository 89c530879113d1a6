"""Speculative decoding across tiers: an edge node drafts, another tier verifies.

- :mod:`.sessions`: a decoder whose KV-cache slots belong to sessions that outlive a call
  (TTL, a bound on sessions, LRU eviction), batching calls of many sessions per forward pass.
- :mod:`.acceptance`: greedy verification and speculative sampling (Leviathan et al., Chen et al.).
- :mod:`.verifier`: one verify round = one forward pass over the drafts.
- :mod:`.drafter`: drafts k tokens per round (k adaptive, :mod:`.adaptive`) and drives the rounds.
- :mod:`.client`, :mod:`.service`: the Verify rpc's client and the Generator service's speculative side.
- :mod:`.tokenizers`: a tokenizer fingerprint, so a draft/verify pair with different vocabularies is refused.
"""
