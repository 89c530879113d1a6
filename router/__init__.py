"""The cascade router: policy, scorer, optimizer, cascade runtime, ledger and server."""
