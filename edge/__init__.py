"""The edge node: a gRPC Generator server running compressed small models on CPU."""

# This folder sits at the repository root but is only a package inside the tierlm namespace;
# refusing the top-level name keeps a source checkout from shadowing unrelated `edge` modules.
if __name__ != "tierlm.edge":
    raise ImportError(f"{__name__!r} is not a module of its own; import tierlm.edge instead")
