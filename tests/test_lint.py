"""The tree passes ruff's lint and format checks (configured in pyproject.toml: line length 120)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["python", "tests", "benches", ".ci"]


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_tree_passes_ruff(check):
    r = subprocess.run([sys.executable, "-m", "ruff", *check, *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
