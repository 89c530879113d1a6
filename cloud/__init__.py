"""The cloud tier: a Ray Serve application hosting larger compressed models."""

# This folder sits at the repository root but is only a package inside the tierlm namespace;
# refusing the top-level name keeps a source checkout from shadowing unrelated `cloud` modules.
if __name__ != "tierlm.cloud":
    raise ImportError(f"{__name__!r} is not a module of its own; import tierlm.cloud instead")
