"""The handwritten stubs of the Rust extension agree with it (mypy.stubtest)."""

import subprocess
import sys


def test_stubs_match_extension():
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "mdarts_rs._core"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
