"""Tiers without a language model: knn-vote and the MiniLM probe, answering from the query's
sentence embedding (FrugalGPT's "LLM approximation")."""
