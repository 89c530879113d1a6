"""Shared compression kernels: quantization, sparsity, low-rank, packed formats and fast matmuls."""

# This folder sits at the repository root but is only a package inside the tierlm namespace;
# refusing the top-level name keeps a source checkout from shadowing unrelated `kernels` modules.
if __name__ != "tierlm.kernels":
    raise ImportError(f"{__name__!r} is not a module of its own; import tierlm.kernels instead")
