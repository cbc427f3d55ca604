"""CI: build the CUDA kernels exactly as a GPU user's first run does (torch.utils.cpp_extension, same flags),
on a machine without a GPU. A kernel that does not compile fails CI.

nvcc comes from the system when its version matches torch's CUDA, else from NVIDIA's compiler wheels on
PyPI, installed once into ``$MDARTS_CACHE/nvcc-<version>`` with every CUDA piece pinned to torch's CUDA
minor version (a newer nvvm or crt makes ptxas fail with "Unsupported .version").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ARCH = os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")  # Hopper (H100/H200), the GPUs this project targets


def cache_dir() -> Path:
    return Path(os.environ.get("MDARTS_CACHE", Path.home() / ".cache" / "mdarts_rs"))


def system_nvcc(version: str) -> Path | None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    return Path(nvcc).resolve().parent.parent if m and m.group(1) == version else None


def wheel_nvcc(version: str) -> Path:
    major, minor = version.split(".")
    if int(major) < 13:
        sys.exit(f"ci: torch uses CUDA {version}; install a matching nvcc (the wheel layout handled here is CUDA 13's)")
    target = cache_dir() / f"nvcc-{version}"
    home = target / "nvidia" / f"cu{major}"
    if not (home / "bin" / "nvcc").exists():
        pins = [f"{name}=={major}.{minor}.*" for name in
                ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-cccl", "nvidia-cuda-runtime")]
        print(f"ci: installing {' '.join(pins)} into {target}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), *pins], check=True)
    # cpp_extension links -L$CUDA_HOME/lib64 -lcudart; the runtime wheel ships only libcudart.so.<major>.
    lib64 = home / "lib64"
    lib64.mkdir(exist_ok=True)
    link = lib64 / "libcudart.so"
    if not link.exists():
        real = next((home / "lib").glob("libcudart.so.*"))
        link.symlink_to(real)
    return home


def main() -> None:
    version = torch.version.cuda
    if version is None:
        sys.exit("ci: this torch has no CUDA; the CUDA compile check needs a CUDA build of torch (PyPI's default)")
    version = ".".join(version.split(".")[:2])
    home = system_nvcc(version) or wheel_nvcc(version)
    os.environ["CUDA_HOME"] = str(home)
    os.environ["PATH"] = f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}"
    os.environ["TORCH_CUDA_ARCH_LIST"] = ARCH
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 2))
    from mdarts_rs import ops

    print(f"ci: building the CUDA kernels with {home / 'bin' / 'nvcc'} for sm_{ARCH.replace('.', '')}", flush=True)
    ops.load_extension(with_cuda=True)
    for op in ("weighted_sum", "weighted_sum_backward", "softmax_entropy", "softmax_entropy_backward", "node_mix",
               "node_mix_backward", "bn_mix", "bn_mix_backward", "depthwise_conv", "depthwise_conv_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mdarts::{op}", "CUDA"), f"no CUDA kernel for {op}"
    print("ci: CUDA kernels compiled and registered")


if __name__ == "__main__":
    main()
