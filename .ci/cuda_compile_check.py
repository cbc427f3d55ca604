"""CI: build the CUDA kernels exactly as a GPU user's `mdarts-rs build-kernels` does (torch.utils.cpp_extension,
same flags, nvcc of torch's CUDA version from the system or NVIDIA's wheels), on a machine without a GPU. A kernel
that does not compile, or does not register its CUDA ops, fails CI (`.ci/run` runs this after the suite)."""

from __future__ import annotations

import os

import torch

from mdarts_rs.ops import build_kernels

ARCH = os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")  # Hopper (H100/H200), the GPUs this project targets


def main() -> None:
    home = build_kernels(arch=ARCH)
    print(f"ci: built the CUDA kernels with {home / 'bin' / 'nvcc'} for sm_{ARCH.replace('.', '')}", flush=True)
    for op in ("weighted_sum", "weighted_sum_backward", "softmax_entropy", "softmax_entropy_backward"):
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"mdarts::{op}", "CUDA"):
            raise SystemExit(f"ci: the kernels compiled, but mdarts::{op} has no CUDA kernel registered")
    print("ci: CUDA kernels compiled and registered")


if __name__ == "__main__":
    main()
