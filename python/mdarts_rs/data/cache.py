"""Where mdarts-rs keeps what it downloads, decodes or builds: ``$MDARTS_CACHE``, else ``~/.cache/mdarts_rs``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$MDARTS_CACHE``, else ``~/.cache/mdarts_rs``."""
    return Path(os.environ.get("MDARTS_CACHE", Path.home() / ".cache" / "mdarts_rs"))
