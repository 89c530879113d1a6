"""The trailing-metadata keys of speculative calls: torch-free, so the router can read them."""

#: Trailing metadata of a Verify refused for a lost session: the tokens the verifier holds.
SESSION_LENGTH_KEY = "tierlm-session-length"
#: Trailing metadata of a failed speculative generation: its SpeculativeStats, serialized.
STATS_KEY = "tierlm-speculative-stats-bin"
