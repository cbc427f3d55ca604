"""Reading and writing genotype files (JSON written by a search, or DARTS-style text)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mdarts_rs._core import Genotype, GenotypeError, MultiLevelGenotype, parse_genotype
from mdarts_rs.genotypes import PUBLISHED, published


def _is_genotype_text(text: str) -> bool:
    """Whether ``text`` reads as genotype text rather than a file name: JSON (``{...``), or DARTS text
    (``[NAME =] Genotype(normal=[...], ...)``: a constructor call holding ``=`` or ``[``), so that a missing file
    such as ``runs/search(1)/genotype.json`` is reported as missing, not as text that does not parse."""
    t = text.strip()
    return t.startswith("{") or (re.match(r"(\w+\s*=\s*)?\w+\s*\(", t) is not None and ("[" in t or "=" in t))


def load_genotype(source: str | os.PathLike[str]) -> Genotype | MultiLevelGenotype:
    """Load a genotype from a file (JSON or DARTS text) or from the text itself.

    A path that exists is read as a file, whatever characters its name holds; otherwise ``source`` is a published
    genotype's name (``mdarts_rs.genotypes``: darts_v2, pc_darts, ...) or genotype text, so
    ``load_genotype("run/genotype.json")``, ``load_genotype("darts_v2")`` and
    ``load_genotype("Genotype(normal=[...], ...)")`` all work. Errors name the file.
    """
    text = os.fspath(source)
    path = Path(text)
    try:
        is_file, exists = path.is_file(), path.exists()
    except (OSError, ValueError):  # a name too long for a path, or with a NUL byte: text, not a file
        is_file = exists = False
    if exists and not is_file:
        raise GenotypeError(f"{path}: is a folder, not a genotype file (give e.g. {path / 'genotype.json'})")
    if is_file:
        data = path.read_bytes()
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GenotypeError(
                f"{path}: not a text file (byte {e.start} is not UTF-8); expected genotype JSON or DARTS text"
            ) from None
        if "\0" in content:
            raise GenotypeError(f"{path}: not a text file (it holds NUL bytes); expected genotype JSON or DARTS text")
        try:
            return parse_genotype(content)
        except GenotypeError as e:
            raise GenotypeError(f"{path}: {e}") from None
    known = published(text)
    if known is not None:
        return parse_genotype(known.text)
    if _is_genotype_text(text):
        return parse_genotype(text)
    raise FileNotFoundError(f"{path}: no such genotype file, nor a published genotype ({', '.join(PUBLISHED)})")


def save_genotype(genotype: Genotype | MultiLevelGenotype, path: str | os.PathLike[str]) -> None:
    """Write a genotype as JSON, atomically (a crash never leaves a half-written file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(genotype.to_json() + "\n")
    os.replace(tmp, path)
