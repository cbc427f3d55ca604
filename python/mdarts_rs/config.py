"""Run configurations, saved with every run as ``config.json``. Each setting is defined once, here: its type,
range, choices, default and help; the command line's options are generated from these fields, and the one
validation below refuses bad values and incompatible settings with the same message from the CLI and Python."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import numbers
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdarts_rs import _core
from mdarts_rs.geometry import stem_plan

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

#: Upper limit of the channels of a network, checked before anything is built (the Rust core holds the other
#: limits: MAX_LAYERS cells, MAX_IMAGES images, MAX_BATCH_SIZE, MAX_WORKERS loader threads).
MAX_CHANNELS = 1024  # init_channels: DARTS searches with 16, evaluates with 36 (CIFAR-10) and 48 (ImageNet)
#: Seeds are 64-bit in the Rust core.
MAX_SEED = 2**64 - 1


def derived_seed(seed: int, offset: int) -> int:
    """The seed ``offset`` places after ``seed`` (a second loader's, a rank's), wrapping within 64 bits so that
    every seed up to MAX_SEED gives seeds in range."""
    return (seed + offset) % (MAX_SEED + 1)


#: The ``--dataset`` choices of search, sweep, train and test (``imagenet`` is train's torchvision recipe).
DATASETS = ("cifar10", "cifar100", "arrays", "folder")
#: The largest finite float32: settings that reach float32 tensors (learning rates, decays) must stay below it.
FLOAT32_MAX = 3.4028234663852886e38


class ConfigError(ValueError):
    """Settings that cannot run (a value out of range, settings that exclude each other): refused before any file
    is read or written, naming every problem."""


def setting(
    default: Any,
    help: str = "",
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    limit: str | None = None,
    choices: tuple[str, ...] | None = None,
    option: bool = True,
    required: bool = False,
    factory: Callable[[], Any] | None = None,
    cli: str | None = None,
) -> Any:
    """A config field with what the command line and the validation need to know about it: its help, its range
    (``low``/``high``, open or closed; ``limit`` names the constant an upper bound comes from), its ``choices``;
    ``option`` False for fields the CLI fills another way; ``factory`` makes a mutable default; ``cli`` names the
    option where it is not the field's name."""
    meta = dict(
        help=help,
        low=low,
        high=high,
        low_open=low_open,
        high_open=high_open,
        limit=limit,
        choices=choices,
        option=option,
        required=required,
        cli=cli,
    )
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _one_of(choices: tuple[str, ...]) -> str:
    if len(choices) == 2:
        return f"{choices[0]!r} or {choices[1]!r}"
    return "one of " + ", ".join(choices)


def _kind(f: dataclasses.Field) -> str:
    """The value kind of a field from its annotation: int, float, bool, str, path, pair (two floats), or a list of
    ints, floats or texts (``tuple[int, ...]``: "ints", "floats", "strs")."""
    ann = str(f.type)
    if ann.startswith("dict["):
        return "dict"
    if ann.startswith("tuple[") and ann.endswith(", ...]"):
        return ann[len("tuple[") : -len(", ...]")] + "s"
    for kind, marker in (("pair", "tuple"), ("path", "Path"), ("bool", "bool"), ("float", "float"), ("int", "int")):
        if marker in ann:
            return kind
    return "str"


def optional(f: dataclasses.Field) -> bool:
    """Whether a field may be None (``X | None``)."""
    return "None" in str(f.type)


def _as_kind(kind: str, value: Any) -> tuple[bool, Any]:
    """(whether ``value`` is of ``kind``, the value converted: ints and floats from any number type)."""
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == "int" and integral:
        return True, int(value)
    if kind == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return True, float(value)
    ok = {"bool": bool, "str": str, "dict": dict}.get(kind)
    return (ok is not None and isinstance(value, ok)), value


_WANT = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text", "path": "a path"}
_WANT["dict"] = "a mapping of settings"
_PLURAL = {"int": "integers", "float": "numbers", "str": "texts"}


def _coerce(f: dataclasses.Field, value: Any) -> tuple[Any, str | None]:
    """``value`` as the field's kind (ints and floats from any number type, paths from text), or a problem."""
    kind = _kind(f)
    if value is None:
        return None, None if optional(f) else f"{f.name} must be set, got None"
    if kind == "path" and isinstance(value, (str, os.PathLike)):
        if str(value) == "":
            return value, f"{f.name} must name a {'run folder' if f.name == 'out' else 'path'}, got an empty path"
        return Path(value), None
    if kind in ("pair", "ints", "floats", "strs"):
        element = "float" if kind == "pair" else kind[:-1]
        if isinstance(value, (tuple, list)) and (len(value) == 2 if kind == "pair" else len(value) > 0):
            converted = [_as_kind(element, v) for v in value]
            if all(ok for ok, _ in converted):
                return tuple(v for _, v in converted), None
        want = "two numbers" if kind == "pair" else f"a non-empty list of {_PLURAL[element]}"
        return value, f"{f.name} must be {want}, got {value!r}"
    ok, converted = _as_kind(kind, value)
    if ok:
        return (dict(converted) if kind == "dict" else converted), None
    return value, f"{f.name} must be {_WANT[kind]}, got {value!r} ({type(value).__name__})"


def _range_problem(f: dataclasses.Field, value: Any) -> str | None:
    """The problem of a number outside its field's range, worded as the range is."""
    m = f.metadata
    values = value if isinstance(value, tuple) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        return f"{f.name} must be a finite number, got {value}"
    if any(isinstance(v, float) and abs(v) > FLOAT32_MAX for v in values):
        return f"{f.name} = {value} is beyond float32's range (±{FLOAT32_MAX:.3g}), which the networks compute in"
    low, high = m.get("low"), m.get("high")
    lo, hi = (f"{b:g}" if isinstance(b, float) else str(b) for b in (low, high))
    for v in values:
        if high is not None and m.get("limit") and v > high:
            return f"{f.name} = {v} is above the limit of {high} ({m['limit']})"
        below = low is not None and (v <= low if m.get("low_open") else v < low)
        above = high is not None and (v >= high if m.get("high_open") else v > high)
        if not (below or above):
            continue
        if low == 1 and high is None and _kind(f) == "int":
            return f"{f.name} must be positive, got {value}"
        if high is None or m.get("limit"):
            return f"{f.name} must be {'>' if m.get('low_open') else '>='} {lo}, got {value}"
        if low is None:
            return f"{f.name} must be {'<' if m.get('high_open') else '<='} {hi}, got {value}"
        left, right = "(" if m.get("low_open") else "[", ")" if m.get("high_open") else "]"
        return f"{f.name} must be in {left}{lo}, {hi}{right}, got {value}"
    return None


def field_problems(cfg: Any) -> list[str]:
    """Every field's problems (type, range, choices), converting numbers and paths to the field's kind."""
    problems = []
    for f in dataclasses.fields(cfg):
        value, problem = _coerce(f, getattr(cfg, f.name))
        if problem is None and value is not None:
            object.__setattr__(cfg, f.name, value)
            choices = f.metadata.get("choices")
            if choices and any(v not in choices for v in (value if isinstance(value, tuple) else (value,))):
                problem = f"{f.name} must be {_one_of(choices)}, got {value!r}"
            elif isinstance(value, (int, float, tuple)) and not isinstance(value, bool):
                problem = _range_problem(f, value)
        if problem:
            problems.append(problem)
    return problems


def _validate(cfg: Any, rules: Callable[[Any], list[str]]) -> None:
    """ConfigError naming every problem: the fields' own, then ``cfg``'s rules between fields (only where every
    field is valid, so that they compare values of the right kind)."""
    problems = field_problems(cfg)
    if not problems:
        problems += rules(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


def resume_conflicts(saved: dict[str, Any], current: dict[str, Any], may_change: set[str]) -> None:
    """ValueError naming every setting, outside ``may_change``, in which a checkpoint's configuration differs
    from the one resuming it."""
    changed = sorted(k for k in saved if saved[k] != current.get(k) and k not in may_change)
    if changed:
        diffs = ", ".join(f"{k}: {saved[k]!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(f"cannot resume with a different configuration ({diffs})")


_DATA_HELP = (
    "The data: a CIFAR-10 or CIFAR-100 folder (binary or python version), a .npz file (--dataset arrays) or an "
    "image folder with one sub-folder per class (--dataset folder). CIFAR default: $MDARTS_DATA, else the "
    "download cache."
)


@dataclass
class DataSettings:
    """The data a run reads, alike for searches and trainings."""

    data: Path | None = setting(None, _DATA_HELP)
    dataset: str = setting(
        "cifar10",
        "cifar10, cifar100, arrays (.npz: images, labels, optional class_names) or folder (one sub-folder per "
        "class; with train/ and val/ the search reads train/ only).",
        choices=DATASETS,
    )
    label: str = setting(
        "fine", "CIFAR-100's labels: 100 fine classes or 20 coarse superclasses.", choices=("fine", "coarse")
    )
    image_size: int | None = setting(
        None,
        "--dataset folder: the side images are resized (shorter side) and centre-cropped to. Default 32.",
        low=4,
        high=_core.MAX_SIDE,
    )
    skip_bad_images: bool = setting(
        False,
        "--dataset folder: leave out files that cannot be decoded, with a warning listing them, instead of "
        "stopping at the first.",
    )
    workers: int | None = setting(
        None, "Loader threads per loader. Default: min(4, CPUs).", low=0, high=_core.MAX_WORKERS, limit="MAX_WORKERS"
    )

    def _data_rules(self) -> list[str]:
        """The data settings' problems: a label kind its dataset lacks, an image size the networks cannot take."""
        out = []
        if self.label == "coarse" and self.dataset != "cifar100":
            out.append("label 'coarse' (CIFAR-100's 20 superclasses) needs dataset 'cifar100'")
        if self.image_size is not None:
            if self.dataset != "folder":
                out.append(f"image_size is for --dataset folder (the images of {self.dataset} keep their size)")
            else:
                try:
                    stem_plan(self.image_size)
                except ValueError as e:
                    out.append(str(e))
        return out

    def _tensorboard_rules(self) -> list[str]:
        """TensorBoard asked for where it is not installed (every kind of run has the setting)."""
        if getattr(self, "tensorboard") and importlib.util.find_spec("tensorboard") is None:
            return ["--tensorboard needs the tensorboard package: pip install 'mdarts-rs[tensorboard]'"]
        return []

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-ready values (paths as text)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class RunSettings(DataSettings):
    """What searches and trainings share besides their data: TensorBoard's event files."""

    tensorboard: bool = setting(
        False, "Write TensorBoard event files into the run folder's tb/ (the tensorboard extra)."
    )
    log_every: int = setting(
        50, "With --tensorboard: log the step's losses, learning rates and norms every N steps.", low=1
    )


@dataclass
class SearchConfig(RunSettings):
    """A search run. Defaults are DARTS' first-order CIFAR-10 search (Liu et al. 2019, section 3.1) with the
    multi-level layout and γ = 1 (Li, Chen, Sun 2021), on the batched supernet."""

    out: Path = setting(Path("runs/search"), "Run folder.")
    alpha_mode: str = setting(
        "multilevel", "multilevel: own α per level (the paper); shared: DARTS.", choices=("multilevel", "shared")
    )
    gamma: float = setting(1.0, "Weight of the entropy term; 0 gives plain multi-level.", low=0)
    entropy_reduction: str = setting("sum", "Sum (eq. 6) or mean of the edge entropies.", choices=("sum", "mean"))
    epochs: int = setting(50, low=1)
    batch_size: int = setting(
        64, "Global batch (split over torchrun processes).", low=1, high=_core.MAX_BATCH_SIZE, limit="MAX_BATCH_SIZE"
    )
    micro_batches: int = setting(
        1,
        "K: each α and weight step splits its batch (each process's share of it under torchrun) into K chunks and "
        "sums their gradients before updating once: less memory, the same batch (batch-norm statistics per chunk).",
        low=1,
    )
    init_channels: int = setting(16, "C of the supernet.", low=1, high=MAX_CHANNELS, limit="MAX_CHANNELS")
    layers: int = setting(8, "Cells of the supernet.", low=3, high=_core.MAX_LAYERS, limit="MAX_LAYERS")
    portion: float = setting(
        1.0, "Fraction of the training images used, split in half into S_train and S_val.", low=0, low_open=True, high=1
    )
    seed: int = setting(0, low=0, high=MAX_SEED)
    device: str = setting("auto", "auto, cpu, cuda, cuda:1, ...")
    lr: float = setting(0.025, "Weight learning rate (cosine to --lr-min).", low=0)
    lr_min: float = setting(0.001, low=0)
    momentum: float = setting(0.9, low=0, high=1)
    weight_decay: float = setting(3e-4, low=0)
    grad_clip: float = setting(5.0, low=0, low_open=True)
    arch_lr: float = setting(3e-4, "α learning rate (Adam).", low=0)
    arch_betas: tuple[float, float] = setting(
        (0.5, 0.999), "Adam's betas for α (DARTS: 0.5 0.999).", low=0, high=1, high_open=True
    )
    arch_weight_decay: float = setting(1e-3, low=0)
    order: int = setting(
        1, "α gradient: 1 first order, 2 DARTS' unrolled second order (Liu et al. 2019, eqs. 6-8).", low=1, high=2
    )
    partial_channels: int = setting(
        1,
        "K: each edge's ops see 1/K of the channels, with edge normalisation (PC-DARTS; 1: off).",
        low=1,
        high=MAX_CHANNELS,
        limit="MAX_CHANNELS",
    )
    arch_start_epoch: int = setting(
        0, "α warm-up: α stays fixed for this many epochs while the weights train (P-DARTS, PC-DARTS).", low=0
    )
    max_skip: int | None = setting(
        None, "At most M skip_connect edges per derived normal cell (P-DARTS). Default: no cap.", low=0, high=8
    )
    gap_images: int = setting(
        1024, "Fixed S_val images for the supernet/derived gap.", low=1, high=_core.MAX_IMAGES, limit="MAX_IMAGES"
    )
    steps_per_epoch: int | None = setting(None, "Cap the steps of each epoch (smoke runs).", low=1)
    supernet: str = setting(
        "batched",
        "batched: the edges that read each node batched into few large kernels; plain: DARTS' network edge by edge, "
        "the readable reference (the same function and the same search).",
        choices=("batched", "plain"),
    )
    bf16: bool = setting(False, "bfloat16 autocast of the network (α and losses stay float32).")
    tf32: bool = setting(False, "Allow TF32 matrix multiplies and convolutions on the GPU.")
    cuda_graph: bool = setting(
        False, "Replay each search step as one CUDA graph (falls back to eager steps where capture fails)."
    )
    deterministic: bool = setting(False, "cuDNN's deterministic algorithms on the GPU instead of its autotuner.")
    resume: bool = setting(False, "Continue the run in --out from its checkpoint.")
    overwrite: bool = setting(False, "Replace the run files already in --out (without it, such a folder is refused).")
    quiet: bool = setting(False, "No progress bars or epoch lines.")
    plots: bool = setting(True, "Write the PNG plots.")

    def __post_init__(self) -> None:
        _validate(self, SearchConfig._rules)

    def _rules(self) -> list[str]:
        """The settings that exclude each other, and those only valid together."""
        out = self._data_rules() + self._tensorboard_rules()
        if self.resume and self.overwrite:
            out.append("resume and overwrite exclude each other")
        if self.lr_min > self.lr:
            out.append(f"lr_min = {self.lr_min} must not exceed lr = {self.lr} (the cosine schedule falls to it)")
        if self.micro_batches > self.batch_size:
            out.append(
                f"micro_batches = {self.micro_batches} must not exceed batch_size = {self.batch_size} (every "
                "micro-batch needs an image)"
            )
        if self.init_channels % self.partial_channels:
            out.append(
                f"partial_channels = {self.partial_channels} must be positive and divide init_channels = "
                f"{self.init_channels}"
            )
        if self.arch_start_epoch > self.epochs:
            out.append(f"arch_start_epoch must be in [0, epochs = {self.epochs}], got {self.arch_start_epoch}")
        try:
            _core.AlphaLayout(self.alpha_mode, self.layers)
        except _core.SearchSpaceError as e:
            out.append(str(e))
        return out + self._combination_rules()

    def _combination_rules(self) -> list[str]:
        """The DARTS-family options that do not combine, and the combinations with --cuda-graph that no GPU run
        has verified yet (refused rather than run unchecked)."""
        out = []
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

    def check_world(self, world_size: int) -> None:
        """ConfigError for settings one search cannot run with over ``world_size`` torchrun processes."""
        if world_size <= 1:
            return
        problems = []
        if self.order == 2:
            problems.append(
                "order 2 is not supported over several processes (the unrolled step needs the whole batch's "
                "weight gradient first): use order 1, or one process"
            )
        if self.cuda_graph:
            problems.append("--cuda-graph is not supported under torchrun yet: drop it, or run one process")
        if self.batch_size < world_size * self.micro_batches:
            problems.append(
                f"batch_size = {self.batch_size} is smaller than {world_size} processes × {self.micro_batches} "
                "micro-batches: every chunk needs an image"
            )
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "config.json") -> SearchConfig:
        """The settings saved as ``d`` (a run's ``config.json``, a checkpoint's config: ``source``, for messages)."""
        return _from_json(cls, _with_supernet(d) if isinstance(d, dict) else d, REMOVED_SEARCH_SETTINGS, source)


def _with_supernet(d: dict[str, Any]) -> dict[str, Any]:
    """Search settings written before the batched supernet became the default, where ``fast`` chose it, with
    ``supernet`` in its place."""
    if "fast" not in d:
        return d
    return {**{k: v for k, v in d.items() if k != "fast"}, "supernet": "batched" if d["fast"] else "plain"}


#: Search settings of earlier versions (their runs built other batched-cell layouts or other steps).
REMOVED_SEARCH_SETTINGS = frozenset({"channels_last", "compile"})


def _from_json(cls: type, d: dict[str, Any], removed_settings: frozenset[str], source: str = "config.json") -> Any:
    """A config from its saved JSON (read from ``source``, named in messages); ValueError naming the settings an
    earlier version wrote that this one removed, or fields this version does not know."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: not a mapping of settings ({type(d).__name__})")
    d = {k: v for k, v in d.items() if k not in RECORDS}
    removed = sorted(set(d) & removed_settings)
    if removed:
        raise ValueError(
            f"{source}: this run was written by an earlier mdarts-rs with settings this version removed ({', '.join(removed)}); "
            "it cannot be resumed or reloaded: start a new run (the README's changelog says what replaced them)"
        )
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{source}: unknown fields {unknown}")
    return cls(**d)


#: ``--preset quick``: a small supernet on a data subset, a few minutes on 2 CPU cores.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"epochs": 3, "batch_size": 16, "init_channels": 8, "layers": 5, "portion": 0.02, "gap_images": 256},
    "paper": {},
}


@dataclass
class TrainConfig(RunSettings):
    """A training run of an evaluation network (DARTS' CIFAR-10 recipe by default)."""

    genotype: str = setting(
        "", "genotype.json of a search, a DARTS-style text file, or the text itself.", required=True
    )
    dataset: str = setting(
        "cifar10",
        "cifar10, cifar100, arrays (.npz: images, labels, optional class_names) or folder (one sub-folder per "
        "class; with train/ and val/ the search reads train/ only); imagenet: an ImageFolder through torchvision "
        "with the ImageNet recipe.",
        choices=(*DATASETS, "imagenet"),
    )
    out: Path = setting(Path("runs/train"), "Run folder.")
    holdout: float = setting(
        0.1,
        "Data without a test set (a folder without train/ and val/, arrays without test_images): the part of its "
        "images held out as the test set, drawn from --seed and saved in the checkpoint.",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    test_on: str = setting(
        "test",
        "test: score every epoch on the data's test set; holdout: on --holdout of the training images, held out "
        "(the test set is then never read: selection of a cell by validation accuracy).",
        choices=("test", "holdout"),
    )
    epochs: int = setting(600, low=1)
    batch_size: int = setting(
        96, "Global batch (split over torchrun processes).", low=1, high=_core.MAX_BATCH_SIZE, limit="MAX_BATCH_SIZE"
    )
    lr: float = setting(0.025, low=0, low_open=True)
    lr_schedule: str = setting("cosine", choices=("cosine", "linear"))
    warmup_epochs: int = setting(0, low=0)
    momentum: float = setting(0.9, low=0, high=1)
    weight_decay: float = setting(3e-4, low=0)
    grad_clip: float = setting(5.0, low=0, low_open=True)
    init_channels: int = setting(36, low=2, high=MAX_CHANNELS, limit="MAX_CHANNELS")
    layers: int = setting(20, low=3, high=_core.MAX_LAYERS, limit="MAX_LAYERS")
    auxiliary: bool = setting(True)
    auxiliary_weight: float = setting(0.4, low=0)
    cutout: int = setting(16, low=0, high=32)
    drop_path: float = setting(0.2, low=0, high=1, high_open=True)
    label_smoothing: float = setting(0.0, low=0, high=1, high_open=True)
    seed: int = setting(0, low=0, high=MAX_SEED)
    device: str = setting("auto")
    bf16: bool = setting(False, "bfloat16 autocast.")
    steps_per_epoch: int | None = setting(None, "Cap the steps of each epoch (smoke runs).", low=1)
    resume: bool = setting(False)
    overwrite: bool = setting(False, "Replace the run files already in --out.")
    quiet: bool = setting(False)

    def __post_init__(self) -> None:
        _validate(self, TrainConfig._rules)

    def _rules(self) -> list[str]:
        out = self._data_rules() + self._tensorboard_rules()
        if self.resume and self.overwrite:
            out.append("resume and overwrite exclude each other")
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "config.json") -> TrainConfig:
        return _from_json(cls, d, REMOVED_TRAIN_SETTINGS, source)


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


#: The protocol's presets: the search and training recipes of every run, and the selection's epochs.
#: tiny: seconds per run on a CPU (for tests); proxy: the CIFAR-10 subset, short runs; paper: the published
#: protocol (DARTS' search and evaluation, Liu et al. 2019, sections 3.1-3.2, with the paper's γ sweep).
PROTOCOL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "search": {
            "epochs": 1,
            "batch_size": 4,
            "init_channels": 4,
            "layers": 5,
            "steps_per_epoch": 2,
            "gap_images": 8,
            "plots": False,
        },
        "train": {
            "epochs": 1,
            "batch_size": 8,
            "init_channels": 4,
            "layers": 5,
            "steps_per_epoch": 2,
            "auxiliary": False,
            "drop_path": 0.0,
        },
        "select_epochs": 1,
    },
    "proxy": {
        "search": {"epochs": 10},
        "train": {"epochs": 100, "init_channels": 16, "layers": 8},
        "select_epochs": 20,
    },
    "paper": {"search": {}, "train": {}, "select_epochs": 100},
}


@dataclass
class ProtocolConfig(DataSettings):
    """A whole protocol: searches for every (γ, α mode, seed), a selection of each (γ, α mode)'s cell by a short
    training scored on a held-out validation split (``final`` "best", DARTS' protocol), final trainings of the
    selected cells (or, ``final`` "all", of every search's cell: the paper's table 1) tested on the test set,
    and a report. ``search``/``train`` override the preset's search and training settings."""

    out: Path = setting(Path("runs/protocol"), "Protocol folder: every run's folder, the report and the settings.")
    preset: str = setting(
        "paper",
        "The runs' recipes: tiny (seconds per run on a CPU), proxy (short runs for the CIFAR-10 subset), paper "
        "(the published protocol).",
        choices=tuple(PROTOCOL_PRESETS),
    )
    gammas: tuple[float, ...] = setting((0.0, 0.1, 1.0, 5.0, 10.0), "γ values, comma-separated.", low=0, cli="gamma")
    alpha_modes: tuple[str, ...] = setting(
        ("multilevel",),
        "α modes, comma-separated: multilevel (the paper), shared (DARTS).",
        choices=("multilevel", "shared"),
        cli="alpha-mode",
    )
    seeds: tuple[int, ...] = setting(
        (0, 1, 2, 3), "Search seeds, comma-separated (the paper repeats 4).", low=0, high=MAX_SEED
    )
    final: str = setting(
        "best",
        "best: the cell selected by validation accuracy trained with each final seed (DARTS' table); all: every "
        "search's cell trained and tested, the mean over searches (the paper's table 1; no selection).",
        choices=("best", "all"),
    )
    select_epochs: int | None = setting(None, "Epochs of each selection training. Default: the preset's.", low=1)
    select_on: str = setting(
        "val",
        "val: select on a validation split held out of the training images; test: on the test set, as the paper "
        "and DARTS' own code do (the report says so).",
        choices=("val", "test"),
    )
    holdout: float = setting(
        0.1,
        "The validation split's share of the training images (5,000 of CIFAR-10's 50,000).",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    final_seeds: tuple[int, ...] = setting(
        (0, 1, 2), "Seeds of the final trainings, comma-separated.", low=0, high=MAX_SEED
    )
    device: str = setting("auto", "auto, cpu, cuda, cuda:1, ...")
    tensorboard: bool = setting(False, "Every run writes TensorBoard event files into its folder's tb/.")
    resume: bool = setting(False, "Continue the protocol in --out: finished runs are kept, stopped ones continued.")
    quiet: bool = setting(False, "No progress bars or epoch lines.")
    search: dict[str, Any] = setting(None, "Search settings over the preset's.", option=False, factory=dict)
    train: dict[str, Any] = setting(None, "Training settings over the preset's.", option=False, factory=dict)

    def __post_init__(self) -> None:
        _validate(self, ProtocolConfig._rules)

    def _rules(self) -> list[str]:
        out = self._data_rules() + self._tensorboard_rules()
        for name, cls in (("search", SearchConfig), ("train", TrainConfig)):
            unknown = sorted(set(getattr(self, name)) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                out.append(f"{name} settings {unknown} are not {cls.__name__} fields")
            decided = sorted(set(getattr(self, name)) & PROTOCOL_DECIDES)
            if decided:
                out.append(f"{name} settings {decided} are decided by the protocol for each of its runs")
            taken = sorted(set(getattr(self, name)) & (PROTOCOL_OWNS - PROTOCOL_DECIDES))
            if taken:
                out.append(f"{name} settings {taken} are the protocol's own: set them as protocol settings")
        for name in ("gammas", "alpha_modes", "seeds", "final_seeds"):
            values = getattr(self, name)
            twice = sorted({v for v in values if values.count(v) > 1}, key=values.index)
            if twice:
                out.append(f"{name} must not repeat a value: {', '.join(map(str, twice))} given twice")
        return out or self._run_rules()

    def _run_rules(self) -> list[str]:
        """The problems of the runs' settings (the preset's with ``search``/``train`` over them), found before any
        run starts: the search of the first γ and α mode and a final training, each training's cells against every α
        mode's levels."""
        data = dict(data=self.data, dataset=self.dataset, label=self.label, image_size=self.image_size)
        runs = (
            (
                "search",
                SearchConfig,
                {**self.search_settings(), "gamma": self.gammas[0], "alpha_mode": self.alpha_modes[0]},
            ),
            ("train", TrainConfig, {**self.train_settings(), "seed": self.final_seeds[0]}),
        )
        out = []
        for name, cls, settings in runs:
            try:
                cfg = cls(**settings, **data, tensorboard=False)
                for mode in self.alpha_modes:  # the cells of every level of a found genotype must fit
                    _core.AlphaLayout(mode, cfg.layers)
            except (ConfigError, _core.SearchSpaceError) as e:
                out.append(f"{name} settings: {e}")
        return out

    def search_settings(self) -> dict[str, Any]:
        """The preset's search settings with this protocol's over them."""
        return {**PROTOCOL_PRESETS[self.preset]["search"], **self.search}

    def train_settings(self) -> dict[str, Any]:
        """The preset's training settings with this protocol's over them."""
        return {**PROTOCOL_PRESETS[self.preset]["train"], **self.train}

    def selection_epochs(self) -> int:
        return self.select_epochs or PROTOCOL_PRESETS[self.preset]["select_epochs"]

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "protocol.json") -> ProtocolConfig:
        return _from_json(cls, d, frozenset(), source)


#: The settings of a protocol's runs that the protocol decides for each run (its folder, seed, γ, α mode, cell).
PROTOCOL_DECIDES = frozenset({"out", "seed", "gamma", "alpha_mode", "genotype", "test_on"})
#: The settings of a protocol's runs that are the protocol's: those it decides, and its own settings.
PROTOCOL_OWNS = frozenset(
    {"data", "dataset", "label", "image_size", "skip_bad_images", "out", "seed", "gamma", "alpha_mode", "genotype"}
    | {"resume", "overwrite", "device", "quiet", "test_on", "holdout", "tensorboard"}
)


#: What a run's config.json records beside its settings, of the data and of the processes that ran it (not
#: settings: a config file may hold them, unread).
RECORDS = ("data_description", "world_size")


def read_settings(path: str | os.PathLike[str], cls: type) -> dict[str, Any]:
    """The settings of a config file for a ``cls`` run: JSON (a run's ``config.json``, ``--print-config``'s output)
    or TOML (``.toml``, for hand-written files). ConfigError naming the file, and every key that is not a setting
    of ``cls``; the values are checked when the config is made from them."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (not UTF-8: byte {e.object[e.start]:#04x} at {e.start})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of settings, not a {type(data).__name__}")
    data = {k: v for k, v in data.items() if k not in RECORDS}
    if cls is SearchConfig:
        data = _with_supernet(data)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{path}: {', '.join(map(repr, unknown))} {'is not a setting' if len(unknown) == 1 else 'are not settings'} of {cls.__name__}"
        )
    return data


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string: JSON's escapes


def dump_settings(cfg: Any, fmt: str = "json") -> str:
    """``cfg``'s settings as a config file that ``read_settings`` reads back: JSON, or TOML (where a setting left
    unset, None, is a comment: TOML has no null)."""
    settings = cfg.to_json()
    if fmt == "json":
        return json.dumps(settings, indent=2) + "\n"
    lines, tables = [], []
    for key, value in settings.items():
        if isinstance(value, dict):
            tables += ["", f"[{key}]", *(f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None)]
        elif value is None:
            lines.append(f"# {key}: unset (the default)")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines + tables) + "\n"
