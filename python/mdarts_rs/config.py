"""Run configurations, filled by the CLI (or by hand) and saved with every run as ``config.json``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Upper limits of the settings that size allocations, checked before anything is built (the Rust core holds
#: the others: MAX_LAYERS cells, MAX_IMAGES images, MAX_BATCH_SIZE, MAX_WORKERS loader threads).
MAX_CHANNELS = 1024  # init_channels: DARTS searches with 16, evaluates with 36 (CIFAR-10) and 48 (ImageNet)


def _not_positive(cfg: Any, names: tuple[str, ...]) -> list[str]:
    return [f"{n} must be positive, got {getattr(cfg, n)}" for n in names if getattr(cfg, n) < 1]


def _too_large(cfg: Any) -> list[str]:
    """Settings above their documented limits (``MAX_CHANNELS`` and the Rust core's ``MAX_*``)."""
    from mdarts_rs import _core

    limits = {
        "layers": ("MAX_LAYERS", _core.MAX_LAYERS),
        "init_channels": ("MAX_CHANNELS", MAX_CHANNELS),
        "batch_size": ("MAX_BATCH_SIZE", _core.MAX_BATCH_SIZE),
        "workers": ("MAX_WORKERS", _core.MAX_WORKERS),
        "gap_images": ("MAX_IMAGES", _core.MAX_IMAGES),
    }
    out = []
    for name, (const, limit) in limits.items():
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > limit:
            out.append(f"{name} = {value} is above the limit of {limit} ({const})")
    return out


def _not_finite(cfg: Any) -> list[str]:
    """Every float setting (pairs included) that is NaN or infinite: such a value would only show up later
    as a non-finite loss, or not at all."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            out.append(f"{f.name} must be a finite number, got {value}")
    return out


def _json(cfg: Any) -> dict[str, Any]:
    """A config as JSON-ready values (paths as text)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}


def _data_problems(cfg: Any) -> list[str]:
    """The dataset settings' problems: an unknown kind or label kind, an image size the networks cannot take."""
    from mdarts_rs.datasets import DATASETS

    out = []
    kinds = DATASETS + (("imagenet",) if isinstance(cfg, TrainConfig) else ())
    if cfg.dataset not in kinds:
        out.append(f"dataset must be one of {', '.join(kinds)}, got {cfg.dataset!r}")
    if cfg.label not in ("fine", "coarse"):
        out.append(f"label must be 'fine' or 'coarse', got {cfg.label!r}")
    elif cfg.label == "coarse" and cfg.dataset != "cifar100":
        out.append("label 'coarse' (CIFAR-100's 20 superclasses) needs dataset 'cifar100'")
    if cfg.image_size is not None:
        from mdarts_rs._core import MAX_SIDE
        from mdarts_rs.primitives import stem_plan

        if cfg.dataset != "folder":
            out.append(f"image_size is for --dataset folder (the images of {cfg.dataset} keep their size)")
        elif not 4 <= cfg.image_size <= MAX_SIDE:
            out.append(f"image_size must be 4 to {MAX_SIDE} (MAX_SIDE), got {cfg.image_size}")
        else:
            try:
                stem_plan(cfg.image_size)
            except ValueError as e:
                out.append(str(e))
    return out


def resume_conflicts(saved: dict[str, Any], current: dict[str, Any], may_change: set[str]) -> None:
    """Raise ValueError naming every setting, outside ``may_change``, in which a checkpoint's configuration
    differs from the one resuming it."""
    changed = sorted(k for k in saved if saved[k] != current.get(k) and k not in may_change)
    if changed:
        diffs = ", ".join(f"{k}: {saved[k]!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(f"cannot resume with a different configuration ({diffs})")


@dataclass
class SearchConfig:
    """A search run. Defaults are DARTS' first-order CIFAR-10 search (Liu et al. 2019, section 3.1) with
    the multi-level layout and γ = 1 (Li, Chen, Sun 2021)."""

    data: Path | None = None
    dataset: str = "cifar10"
    label: str = "fine"
    image_size: int | None = None
    skip_bad_images: bool = False
    out: Path = Path("runs/search")
    alpha_mode: str = "multilevel"
    gamma: float = 1.0
    entropy_reduction: str = "sum"
    epochs: int = 50
    batch_size: int = 64
    micro_batches: int = 1
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
    order: int = 1
    partial_channels: int = 1
    arch_start_epoch: int = 0
    max_skip: int | None = None
    workers: int | None = None
    gap_images: int = 1024
    steps_per_epoch: int | None = None
    fast: bool = False
    bf16: bool = False
    tf32: bool = False
    cuda_graph: bool = False
    deterministic: bool = False
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    plots: bool = True

    def __post_init__(self) -> None:
        if str(self.out) == "":
            raise ValueError("out must name a run folder, got an empty path")
        self.out = Path(self.out)
        if self.data is not None:
            self.data = Path(self.data)
        self.arch_betas = (float(self.arch_betas[0]), float(self.arch_betas[1]))
        problems = _not_finite(self)
        if self.resume and self.overwrite:
            problems.append("resume and overwrite exclude each other")
        if self.alpha_mode not in ("multilevel", "shared"):
            problems.append(f"alpha_mode must be 'multilevel' or 'shared', got {self.alpha_mode!r}")
        if self.entropy_reduction not in ("sum", "mean"):
            problems.append(f"entropy_reduction must be 'sum' or 'mean', got {self.entropy_reduction!r}")
        if not self.gamma >= 0:
            problems.append(f"gamma must be >= 0, got {self.gamma}")
        problems += _not_positive(self, ("epochs", "batch_size", "micro_batches", "init_channels", "layers"))
        problems += _too_large(self)
        if self.micro_batches > self.batch_size:
            problems.append(
                f"micro_batches = {self.micro_batches} must not exceed batch_size = {self.batch_size} (every "
                "micro-batch needs an image)"
            )
        if not 0 < self.portion <= 1:
            problems.append(f"portion must be in (0, 1], got {self.portion}")
        problems += _data_problems(self)
        if not problems:
            from mdarts_rs._core import AlphaLayout, SearchSpaceError

            try:
                AlphaLayout(self.alpha_mode, self.layers)
            except SearchSpaceError as e:
                problems.append(str(e))
        problems += self._variant_problems()
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            problems.append(f"steps_per_epoch must be positive, got {self.steps_per_epoch}")
        if problems:
            raise ValueError("; ".join(problems))

    def _variant_problems(self) -> list[str]:
        """The DARTS-family options: their ranges, and the combinations with --cuda-graph that no GPU run has
        verified yet (refused rather than run unchecked)."""
        out = []
        if self.order not in (1, 2):
            out.append(f"order must be 1 (first-order) or 2 (DARTS' unrolled second order), got {self.order}")
        if self.partial_channels < 1 or self.init_channels % self.partial_channels:
            out.append(
                f"partial_channels = {self.partial_channels} must be positive and divide init_channels = "
                f"{self.init_channels}"
            )
        if not 0 <= self.arch_start_epoch <= self.epochs:
            out.append(f"arch_start_epoch must be in [0, epochs = {self.epochs}], got {self.arch_start_epoch}")
        if self.max_skip is not None and not 0 <= self.max_skip <= 8:
            out.append(f"max_skip must be in [0, 8] (a cell keeps 8 edges), got {self.max_skip}")
        if self.micro_batches > 1 and self.order == 2:
            out.append(
                "micro_batches > 1 with order 2 is not supported: the unrolled step needs the whole batch's weight "
                "gradient before its α gradient; use order 1 or micro_batches 1"
            )
        if self.micro_batches > 1 and self.cuda_graph:
            out.append(
                "cuda_graph with micro_batches > 1 is not supported (the step is captured whole): drop one of them"
            )
        if self.cuda_graph and self.order == 2:
            out.append("cuda_graph with order 2 is not supported yet (no GPU run has verified it): drop one of them")
        if self.cuda_graph and self.arch_start_epoch > 0:
            out.append(
                "cuda_graph with arch_start_epoch > 0 is not supported yet (the step would need capturing again "
                "when α starts moving, which no GPU run has verified): drop one of them"
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SearchConfig:
        return _from_json(cls, d, REMOVED_SEARCH_SETTINGS)


#: Search settings of earlier versions (their runs built other batched-cell layouts or other steps).
REMOVED_SEARCH_SETTINGS = frozenset({"channels_last", "compile"})


def _from_json(cls: type, d: dict[str, Any], removed_settings: frozenset[str]) -> Any:
    """A config from its saved JSON; ValueError naming the settings an earlier version wrote that this one
    removed, or fields this version does not know."""
    # config.json's records of the data and of the processes that ran the search, not settings
    d = {k: v for k, v in d.items() if k not in ("data_description", "world_size")}
    removed = sorted(set(d) & removed_settings)
    if removed:
        raise ValueError(
            f"this run was written by an earlier mdarts-rs with settings this version removed ({', '.join(removed)}); "
            "it cannot be resumed or reloaded: start a new run (the README's changelog says what replaced them)"
        )
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"config.json: unknown fields {unknown}")
    return cls(**d)


#: ``--preset quick``: a small supernet on a data subset, a few minutes on 2 CPU cores.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"epochs": 3, "batch_size": 16, "init_channels": 8, "layers": 5, "portion": 0.02, "gap_images": 256},
    "paper": {},
}


@dataclass
class TrainConfig:
    """A training run of an evaluation network."""

    genotype: str = ""
    data: Path | None = None
    out: Path = Path("runs/train")
    dataset: str = "cifar10"
    label: str = "fine"
    image_size: int | None = None
    skip_bad_images: bool = False
    holdout: float = 0.1
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    lr_schedule: str = "cosine"
    warmup_epochs: int = 0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    init_channels: int = 36
    layers: int = 20
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    cutout: int = 16
    drop_path: float = 0.2
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    bf16: bool = False
    steps_per_epoch: int | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        if str(self.out) == "":
            raise ValueError("out must name a run folder, got an empty path")
        self.out = Path(self.out)
        self.data = Path(self.data) if self.data is not None else None
        problems = _not_finite(self)
        problems += _data_problems(self)
        if not 0 < self.holdout < 1:
            problems.append(f"holdout must be in (0, 1), got {self.holdout}")
        if self.lr_schedule not in ("cosine", "linear"):
            problems.append(f"lr_schedule must be 'cosine' or 'linear', got {self.lr_schedule!r}")
        problems += _not_positive(self, ("epochs", "batch_size", "init_channels", "layers"))
        problems += _too_large(self)
        if not 0 <= self.drop_path < 1:
            problems.append(f"drop_path must be in [0, 1), got {self.drop_path}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        return _from_json(cls, d, REMOVED_TRAIN_SETTINGS)


#: Training settings of earlier versions.
REMOVED_TRAIN_SETTINGS = frozenset({"channels_last"})


#: DARTS' CIFAR-10 recipe (also for CIFAR-100 and the user's data) and the P-DARTS/PC-DARTS ImageNet recipe
#: (mobile setting).
RECIPES: dict[str, dict[str, Any]] = {
    "cifar10": {},
    "cifar100": {},
    "arrays": {},
    "folder": {},
    "imagenet": {
        "epochs": 250,
        "batch_size": 1024,
        "lr": 0.5,
        "lr_schedule": "linear",
        "warmup_epochs": 5,
        "weight_decay": 3e-5,
        "init_channels": 48,
        "layers": 14,
        "cutout": 0,
        "drop_path": 0.0,
        "label_smoothing": 0.1,
    },
}
