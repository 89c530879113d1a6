"""Learning the router's brain: answer records, the learned scorer and its features, scorer
quality metrics, offline cascade evaluation and the budget-constrained optimizer."""
