"""Run configurations, filled by the CLI (or by hand) and saved with every run as ``config.json``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SearchConfig:
    """A search run. Defaults are DARTS' first-order CIFAR-10 search (Liu et al. 2019, section 3.1) with
    the multi-level layout and γ = 1 (Li, Chen, Sun 2021)."""

    data: Path | None = None
    out: Path = Path("runs/search")
    alpha_mode: str = "multilevel"
    gamma: float = 1.0
    entropy_reduction: str = "sum"
    epochs: int = 50
    batch_size: int = 64
    init_channels: int = 16
    layers: int = 8
    portion: float = 1.0
    seed: int = 0
    device: str = "auto"
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    workers: int | None = None
    gap_images: int = 1024
    steps_per_epoch: int | None = None
    fast: bool = False
    resume: bool = False
    quiet: bool = False
    plots: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.data is not None:
            self.data = Path(self.data)
        self.arch_betas = (float(self.arch_betas[0]), float(self.arch_betas[1]))
        problems = []
        if self.alpha_mode not in ("multilevel", "shared"):
            problems.append(f"alpha_mode must be 'multilevel' or 'shared', got {self.alpha_mode!r}")
        if self.entropy_reduction not in ("sum", "mean"):
            problems.append(f"entropy_reduction must be 'sum' or 'mean', got {self.entropy_reduction!r}")
        if not self.gamma >= 0:
            problems.append(f"gamma must be >= 0, got {self.gamma}")
        for name in ("epochs", "batch_size", "init_channels", "layers"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.portion <= 1:
            problems.append(f"portion must be in (0, 1], got {self.portion}")
        if not problems:
            from mdarts_rs._core import AlphaLayout, SearchSpaceError

            try:
                AlphaLayout(self.alpha_mode, self.layers)
            except SearchSpaceError as e:
                problems.append(str(e))
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            problems.append(f"steps_per_epoch must be positive, got {self.steps_per_epoch}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config.json: unknown fields {unknown}")
        return cls(**d)


#: ``--preset quick``: a small supernet on a data subset, a few minutes on 2 CPU cores.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"epochs": 3, "batch_size": 16, "init_channels": 8, "layers": 5, "portion": 0.02, "gap_images": 256},
    "paper": {},
}


@dataclass
class SweepConfig:
    """The paper's table-1 sweep over γ (Li, Chen, Sun 2021), at a configurable scale."""

    gammas: list[float] = field(default_factory=lambda: [0.0, 0.1, 1.0, 5.0, 10.0])
    base: SearchConfig = field(default_factory=SearchConfig)
