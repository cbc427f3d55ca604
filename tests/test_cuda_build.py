"""The CUDA kernels compile with nvcc matching torch's CUDA version, on a machine without a GPU.

Heavy (it may download NVIDIA's compiler wheels and takes minutes), so it runs where
MDARTS_CUDA_BUILD_CHECK=1 is set, as CI does.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "cuda_compile_check.py"


@pytest.mark.skipif(
    os.environ.get("MDARTS_CUDA_BUILD_CHECK") != "1",
    reason="set MDARTS_CUDA_BUILD_CHECK=1 to compile the CUDA kernels (CI does)",
)
def test_cuda_kernels_compile_and_register():
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-8000:]
    assert "ci: CUDA kernels compiled and registered" in r.stdout
