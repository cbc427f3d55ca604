"""Building the CUDA kernels where the machine has no matching CUDA toolkit: ``mdarts-rs build-kernels``.

torch.utils.cpp_extension needs an nvcc of torch's own CUDA version. Where the system has none, NVIDIA's
compiler wheels from PyPI provide one: every CUDA piece pinned to torch's CUDA minor version (a newer nvvm or
crt makes ptxas fail with "Unsupported .version"), installed once into ``$MDARTS_CACHE/nvcc-<version>``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from mdarts_rs.data import default_cache_dir

#: The pinned wheels that make a CUDA compiler (CUDA 13's layout: site-packages/nvidia/cu13).
_WHEELS = ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-cccl", "nvidia-cuda-runtime")


def torch_cuda_version() -> str:
    """torch's CUDA version as major.minor; RuntimeError for a torch without CUDA."""
    if torch.version.cuda is None:
        raise RuntimeError("this torch has no CUDA; the CUDA kernels need a CUDA build of torch (PyPI's default)")
    return ".".join(torch.version.cuda.split(".")[:2])


def system_cuda_home(version: str) -> Path | None:
    """The CUDA toolkit whose nvcc is on PATH, if its version is ``version``."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    return Path(nvcc).resolve().parent.parent if m and m.group(1) == version else None


def wheel_cuda_home(version: str, cache: Path) -> Path:
    """NVIDIA's compiler wheels for CUDA ``version`` under ``cache/nvcc-<version>`` (installed by pip the first
    time), as a CUDA home for torch.utils.cpp_extension."""
    major, minor = version.split(".")
    if int(major) < 13:
        raise RuntimeError(
            f"torch uses CUDA {version}: install the CUDA {version} toolkit (nvcc); the compiler wheels "
            "handled here are CUDA 13's"
        )
    target = cache / f"nvcc-{version}"
    home = target / "nvidia" / f"cu{major}"
    if not (home / "bin" / "nvcc").exists():
        pins = [f"{name}=={major}.{minor}.*" for name in _WHEELS]
        print(f"installing {' '.join(pins)} into {target}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), *pins], check=True
        )
    # cpp_extension links -L$CUDA_HOME/lib64 -lcudart; the runtime wheel ships only libcudart.so.<major>.
    lib64 = home / "lib64"
    lib64.mkdir(exist_ok=True)
    link = lib64 / "libcudart.so"
    if not link.exists():
        runtime = next((home / "lib").glob("libcudart.so.*"), None)
        if runtime is None:
            raise RuntimeError(
                f"{home / 'lib'}: NVIDIA's runtime wheel left no libcudart.so.*; remove {target} and retry"
            )
        link.symlink_to(runtime)
    return home


def cached_cuda_home() -> Path | None:
    """The compiler wheels an earlier ``mdarts-rs build-kernels`` installed for torch's CUDA version, if any."""
    try:
        version = torch_cuda_version()
    except RuntimeError:
        return None
    home = default_cache_dir() / f"nvcc-{version}" / "nvidia" / f"cu{version.split('.')[0]}"
    return home if (home / "bin" / "nvcc").exists() else None


def use_cuda_home(home: Path, arch: str | None = None) -> None:
    """Point torch.utils.cpp_extension at ``home`` (this process and the compilers it starts)."""
    from torch.utils import cpp_extension  # heavy (it loads setuptools): only when building

    os.environ["CUDA_HOME"] = str(home)
    os.environ["PATH"] = f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}"
    if arch is not None:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 2))
    cpp_extension.CUDA_HOME = str(home)  # read once at import
