"""The cascade router: policy, scorer, optimizer, cascade runtime, ledger and server."""

# This folder sits at the repository root but is only a package inside the tierlm namespace;
# refusing the top-level name keeps a source checkout from shadowing unrelated `router` modules.
if __name__ != "tierlm.router":
    raise ImportError(f"{__name__!r} is not a module of its own; import tierlm.router instead")
