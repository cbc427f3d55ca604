"""Reading and writing genotype files (JSON written by a search, or DARTS-style text)."""

from __future__ import annotations

import os
from pathlib import Path

from mdarts_rs._core import Genotype, GenotypeError, MultiLevelGenotype, parse_genotype


def load_genotype(source: str | os.PathLike[str]) -> Genotype | MultiLevelGenotype:
    """Load a genotype from a file (JSON or DARTS text) or from the text itself.

    A path that exists is read; otherwise ``source`` is parsed as genotype text, so both
    ``load_genotype("run/genotype.json")`` and ``load_genotype("Genotype(normal=[...], ...)")`` work.
    Errors name the file.
    """
    path = Path(source)
    text = str(source)
    looks_like_text = "(" in text or "{" in text
    if not looks_like_text:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such genotype file")
        try:
            return parse_genotype(path.read_text())
        except GenotypeError as e:
            raise GenotypeError(f"{path}: {e}") from None
    return parse_genotype(text)


def save_genotype(genotype: Genotype | MultiLevelGenotype, path: str | os.PathLike[str]) -> None:
    """Write a genotype as JSON, atomically (a crash never leaves a half-written file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(genotype.to_json() + "\n")
    os.replace(tmp, path)
