"""A run folder: ``config.json``, ``metrics.jsonl``, genotypes and checkpoints, every file written
atomically (a crash or a kill never leaves a half-written file, and finished epochs are never lost)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mdarts_rs._core import Genotype, MultiLevelGenotype


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunFolder:
    """The files of one search or training run."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def genotype(self) -> Path:
        return self.path / "genotype.json"

    @property
    def genotypes(self) -> Path:
        return self.path / "genotypes"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(obj, indent=2) + "\n")

    def read_json(self, name: str) -> Any:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from None

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` with one line per finished epoch."""
        atomic_write_text(self.metrics, "".join(json.dumps(rec) + "\n" for rec in history))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        out = []
        for i, line in enumerate(self.metrics.read_text().splitlines(), start=1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.metrics}: line {i} is not JSON ({e})") from None
        return out

    def write_genotype(self, genotype: Genotype | MultiLevelGenotype, epoch: int | None = None) -> None:
        """The final genotype, or with ``epoch`` the genotype derived after that epoch."""
        if epoch is None:
            atomic_write_text(self.genotype, genotype.to_json() + "\n")
        else:
            self.genotypes.mkdir(exist_ok=True)
            atomic_write_text(self.genotypes / f"epoch_{epoch:03d}.json", genotype.to_json() + "\n")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        tmp = self.checkpoint.with_name(".checkpoint.pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint)

    def load_checkpoint(self) -> dict[str, Any]:
        if not self.checkpoint.exists():
            raise FileNotFoundError(f"{self.checkpoint}: no checkpoint to resume from")
        try:
            return torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a damaged file
            # torch's own text is long and suggests weights_only=False, which does not help a damaged file.
            first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
            raise ValueError(
                f"{self.checkpoint}: cannot read checkpoint; the file is damaged or was not written by mdarts-rs "
                f"({type(e).__name__}: {first})"
            ) from None
