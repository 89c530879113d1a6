"""Shared compression kernels: quantization, sparsity, low-rank, packed formats and fast matmuls."""
