"""Prompts of varied lengths for generation tests (batching, ragged lengths, speculative rounds)."""

PROMPTS = [
    "The market rose today",
    "Gold prices fell sharply after the central bank raised rates and investors",
    "Oil futures were steady",
    "Headlines: stocks up, bonds down",
    "The quick brown fox",
    "Traders waited for new data while",
    "Gold",
    "Shares of tech companies climbed",
]
