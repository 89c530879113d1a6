"""Matmuls for float sparse weights (:class:`~tierlm.kernels.sparse.tensors.SparseTensor`).

CPU: torch's CSR ``sparse.mm`` with int32 indices (MKL's sparse BLAS; int64 indices measured
slower at batch 1). With 4-byte values plus 4-byte column indices and a gathering inner loop it
only beats dense fp32 at high sparsity; bench/kernels_sparse.py measures where (its results:
bench/results/kernels_sparse.json), and the batch-1 crossover sits near 90% sparsity. There is
no CPU kernel for 2:4 in torch; at 50% (2:4 or unstructured) dense is faster. :data:`CSR_MAX_DENSITY` encodes
the batch-1 (decode) crossover; above it :class:`DenseMatMul` (weights expanded once at load)
is what :func:`cpu_sparse_kernel` picks.

CUDA: 2:4 weights through ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt/CUTLASS sparse
tensor cores, float16), when the device and shape allow it (:func:`semi_structured_supports`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import warnings

import torch

if TYPE_CHECKING:  # a format owns its kernels (QuantizedTensor.kernel), never the reverse
    from tierlm.kernels.sparse.tensors import SparseTensor

#: Highest density (kept fraction) at which CSR beat dense fp32 at batch 1 on every Gemma 3
#: 270M shape benched (bench/results/kernels_sparse.json, "crossover").
CSR_MAX_DENSITY = 0.1


class CSRMatMul:
    """``x [M, K] -> [M, N] float32`` through a CSR copy of the weight (CPU)."""

    def __init__(self, st: SparseTensor) -> None:
        crow, col = st.layout.csr()
        with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and tested here
            warnings.simplefilter("ignore", UserWarning)
            self.weight = torch.sparse_csr_tensor(crow, col, st.values.to(torch.float32), st.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # W·xᵀ with W in CSR measured faster than x·Wᵀ (which transposes to CSC per call).
        return torch.sparse.mm(self.weight, x.to(torch.float32).t().contiguous()).t()


class DenseMatMul:
    """The weight expanded once to dense ``[K, N]`` fp32 (the layout ``x @ W`` runs fastest in)."""

    def __init__(self, st: SparseTensor, device: torch.device | str = "cpu") -> None:
        self.weight_t = st.dequantize().t().contiguous().to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32) @ self.weight_t


def cpu_sparse_kernel(st: SparseTensor, max_density: float = CSR_MAX_DENSITY) -> CSRMatMul | DenseMatMul:
    """CSR where it is measured to pay (density ≤ ``max_density``), dense otherwise."""
    density = 1.0 - st.layout.sparsity
    return CSRMatMul(st) if density <= max_density else DenseMatMul(st)


def semi_structured_supports(st: SparseTensor, device: torch.device | str) -> bool:
    """2:4 pattern, a CUDA device with sparse tensor cores (sm80+), shapes the kernels take."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if st.layout.encoding != "nm" or (st.layout.n, st.layout.m) != (2, 4):
        return False
    n, k = st.shape
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8 and n % 64 == 0 and k % 64 == 0


class SemiStructuredMatMul:
    """2:4 float16 sparse tensor-core matmul on CUDA; ``x [M, K] -> [M, N] float32``."""

    def __init__(self, st: SparseTensor, device: torch.device | str) -> None:
        from torch.sparse import to_sparse_semi_structured

        dense = st.dequantize().to(device=device, dtype=torch.float16)
        self.weight = to_sparse_semi_structured(dense)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.to(torch.float16), self.weight).float()
