"""The ``mdarts-rs`` command line: parses options into config dataclasses and calls one function per command."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mdarts_rs import _core
from mdarts_rs.config import MAX_CHANNELS, PRESETS, SearchConfig, TrainConfig


def _default(cfg: type, name: str) -> Any:
    """A config field's default: the CLI shows and uses the dataclass's own (one place for each default)."""
    field = next(f for f in dataclasses.fields(cfg) if f.name == name)
    return field.default


#: Seeds are 64-bit in the Rust core.
_MAX_SEED = 2**64 - 1


def _sd(name: str) -> Any:
    """A search option's default (a ``SearchConfig`` field's)."""
    return _default(SearchConfig, name)


def _opt(
    name: str, type: Any = None, help: str | None = None, nargs: int = 1, show_default: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A search option named after its ``SearchConfig`` field, with the field's default."""
    return click.option(
        f"--{name.replace('_', '-')}", type=type, nargs=nargs, default=_sd(name), show_default=show_default, help=help
    )


def _flag(name: str, help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An on/off search option named after its ``SearchConfig`` field, with the field's default."""
    return click.option(f"--{name.replace('_', '-')}", is_flag=True, default=_sd(name), help=help)


class FiniteFloat(click.FloatRange):
    """A float option in a range that also refuses NaN and ±inf (click's FloatRange lets NaN through, since
    every comparison with NaN is false)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def _pow10(n: int) -> str:
    return f"10^{math.log10(n):.2f}"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(_core.__version__, prog_name="mdarts-rs")
def main() -> None:
    """Multi-level differentiable architecture search with heuristic entropy (Li, Chen, Sun 2021)."""


@main.command()
def space() -> None:
    """Print the exact sizes of the DARTS and multi-level search spaces."""
    rows = [
        ("DARTS (shared)", "supernet", _core.search_space_size("shared", derived=False)),
        ("DARTS (shared)", "derived", _core.search_space_size("shared", derived=True)),
        ("multi-level", "supernet", _core.search_space_size("multilevel", derived=False)),
        ("multi-level", "derived", _core.search_space_size("multilevel", derived=True)),
    ]
    click.echo(f"{'space':<16}{'kind':<10}{'about':>10}  exact")
    for name, kind, n in rows:
        click.echo(f"{name:<16}{kind:<10}{_pow10(n):>10}  {n}")
    click.echo(
        f"\nA derived cell: {_core.derived_cell_count()} choices "
        f"(2 of each node's incoming edges, one of {len(_core.PRIMITIVES) - 1} ops per kept edge)."
    )


@main.command()
@click.option("--seed", type=click.IntRange(min=0, max=_MAX_SEED), default=0, show_default=True, help="Random seed.")
@click.option("--alpha-mode", type=click.Choice(["multilevel", "shared"]), default="multilevel", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["json", "text"]), default="json", show_default=True)
def sample(seed: int, alpha_mode: str, fmt: str) -> None:
    """Print a genotype drawn uniformly from the derived space (the random-search baseline)."""
    g = _core.sample_genotype(seed, alpha_mode)
    click.echo(g.to_json() if fmt == "json" else repr(g))


def _float_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise click.BadParameter(f"expected finite numbers, got {bad[0]} in {value!r}")
    return out


#: The checkpoint of a trained network, for test, export and predict.
_trained_checkpoint = click.option(
    "--checkpoint",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="checkpoint.pt of a `mdarts-rs train` run.",
)


def _run_folder(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    if not value.strip():
        raise click.BadParameter("must name a run folder, got an empty path")
    return Path(value)


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or min(out) < 0 or max(out) > _MAX_SEED:
        raise click.BadParameter(f"expected integers from 0 to {_MAX_SEED}")
    return out


#: The data options of search, sweep, train and test.
_DATASET_CHOICES = ["cifar10", "cifar100", "arrays", "folder"]
_DATA_HELP = (
    "The data: a CIFAR-10 or CIFAR-100 folder (binary or python version), a .npz file (--dataset arrays) or an "
    "image folder with one sub-folder per class (--dataset folder). CIFAR default: $MDARTS_DATA, else the "
    "download cache."
)


def _data_options(train: bool = False) -> list[Callable[..., Any]]:
    """--dataset, --label, --image-size, --skip-bad-images, with the defaults of their config fields."""
    kinds = _DATASET_CHOICES + (["imagenet"] if train else [])
    cfg = TrainConfig if train else SearchConfig
    return [
        click.option(
            "--dataset",
            type=click.Choice(kinds),
            default=_default(cfg, "dataset"),
            show_default=True,
            help="cifar10, cifar100, arrays (.npz: images, labels, optional class_names) or folder (one "
            "sub-folder per class; with train/ and val/ the search reads train/ only)"
            + ("; imagenet: an ImageFolder through torchvision with the ImageNet recipe." if train else "."),
        ),
        click.option(
            "--label",
            type=click.Choice(["fine", "coarse"]),
            default=_default(cfg, "label"),
            show_default=True,
            help="CIFAR-100's labels: 100 fine classes or 20 coarse superclasses.",
        ),
        click.option(
            "--image-size",
            type=click.IntRange(4, _core.MAX_SIDE),
            default=_default(cfg, "image_size"),
            help="--dataset folder: the side images are resized (shorter side) and centre-cropped to. Default 32.",
        ),
        click.option(
            "--skip-bad-images",
            is_flag=True,
            default=_default(cfg, "skip_bad_images"),
            help="--dataset folder: leave out files that cannot be decoded, with a warning listing them, instead "
            "of stopping at the first.",
        ),
    ]


_SEARCH_OPTIONS: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.option("--data", type=click.Path(path_type=Path), help=_DATA_HELP),
    *_data_options(),
    click.option(
        "--download",
        is_flag=True,
        help="Download CIFAR-10 or CIFAR-100 (checked against its MD5) when no data folder is found.",
    ),
    click.option(
        "--out", metavar="DIR", callback=_run_folder, default=str(_sd("out")), show_default=True, help="Run folder."
    ),
    click.option(
        "--preset",
        type=click.Choice(sorted(PRESETS)),
        help="quick: a small supernet on a data subset (minutes on a CPU); paper: the defaults.",
    ),
    _opt("entropy_reduction", click.Choice(["sum", "mean"]), help="Sum (eq. 6) or mean of the edge entropies."),
    _opt("epochs", click.IntRange(min=1)),
    _opt(
        "batch_size",
        click.IntRange(min=1, max=_core.MAX_BATCH_SIZE),
        help="Global batch (split over torchrun processes).",
    ),
    _opt(
        "micro_batches",
        click.IntRange(min=1),
        help="K: each α and weight step splits its batch (each process's share of it under torchrun) into K "
        "chunks and sums their gradients before updating once: less memory, the same batch (batch-norm "
        "statistics per chunk).",
    ),
    _opt("init_channels", click.IntRange(min=1, max=MAX_CHANNELS), help="C of the supernet."),
    _opt("layers", click.IntRange(min=3, max=_core.MAX_LAYERS), help="Cells of the supernet."),
    _opt(
        "portion",
        FiniteFloat(0, 1, min_open=True),
        help="Fraction of the training images used, split in half into S_train and S_val.",
    ),
    _opt("seed", click.IntRange(min=0, max=_MAX_SEED)),
    click.option("--seeds", callback=_int_list, help="Comma-separated seeds: one search each (the paper repeats 4)."),
    _opt("device", help="auto, cpu, cuda, cuda:1, ..."),
    _opt("lr", FiniteFloat(min=0), help="Weight learning rate (cosine to --lr-min)."),
    _opt("lr_min", FiniteFloat(min=0)),
    _opt("momentum", FiniteFloat(0, 1)),
    _opt("weight_decay", FiniteFloat(min=0)),
    _opt("grad_clip", FiniteFloat(min=0, min_open=True)),
    _opt("arch_lr", FiniteFloat(min=0), help="α learning rate (Adam)."),
    _opt("arch_betas", FiniteFloat(0, 1, max_open=True), help="Adam's betas for α (DARTS: 0.5 0.999).", nargs=2),
    _opt("arch_weight_decay", FiniteFloat(min=0)),
    _opt(
        "order",
        click.IntRange(1, 2),
        help="α gradient: 1 first order, 2 DARTS' unrolled second order (Liu et al. 2019, eqs. 6-8).",
    ),
    _opt(
        "partial_channels",
        click.IntRange(min=1, max=MAX_CHANNELS),
        help="K: each edge's ops see 1/K of the channels, with edge normalisation (PC-DARTS; 1: off).",
    ),
    _opt(
        "arch_start_epoch",
        click.IntRange(min=0),
        help="α warm-up: α stays fixed for this many epochs while the weights train (P-DARTS, PC-DARTS).",
    ),
    _opt(
        "max_skip",
        click.IntRange(0, 8),
        help="At most M skip_connect edges per derived normal cell (P-DARTS). Default: no cap.",
        show_default=False,
    ),
    _opt(
        "workers",
        click.IntRange(min=0, max=_core.MAX_WORKERS),
        help="Loader threads per loader. Default: min(4, CPUs).",
        show_default=False,
    ),
    _opt(
        "gap_images",
        click.IntRange(min=1, max=_core.MAX_IMAGES),
        help="Fixed S_val images for the supernet/derived gap.",
    ),
    _opt(
        "steps_per_epoch", click.IntRange(min=1), help="Cap the steps of each epoch (smoke runs).", show_default=False
    ),
    _flag("fast", "Batch the edges that read each node (same search, fewer and larger kernels)."),
    _flag("bf16", "bfloat16 autocast of the network (α and losses stay float32)."),
    _flag("tf32", "Allow TF32 matrix multiplies and convolutions on the GPU."),
    _flag("cuda_graph", "Replay each search step as one CUDA graph (falls back to eager steps where capture fails)."),
    _flag("deterministic", "cuDNN's deterministic algorithms on the GPU instead of its autotuner."),
    _flag("resume", "Continue the run in --out from its checkpoint."),
    _flag("overwrite", "Replace the run files already in --out (without it, such a folder is refused)."),
    _flag("quiet", "No progress bars or epoch lines."),
    click.option("--no-plots", is_flag=True, help="Skip the PNG plots."),
]


def _options(options: list[Callable[..., Any]]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(options):
            f = opt(f)
        return f

    return apply


def search_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(_SEARCH_OPTIONS):
        f = opt(f)
    return f


def _resolve_data(data: Path | None, download: bool, dataset: str = "cifar10") -> Path:
    from mdarts_rs.data import default_cache_dir, download_cifar10, download_cifar100

    if data is not None:
        return data
    if dataset in ("arrays", "folder", "imagenet"):
        what = {"arrays": "a .npz file", "folder": "an image folder", "imagenet": "an ImageFolder"}[dataset]
        raise click.UsageError(f"--dataset {dataset} needs --data ({what})")
    if os.environ.get("MDARTS_DATA"):
        return Path(os.environ["MDARTS_DATA"])
    cifar100 = dataset == "cifar100"
    cached = default_cache_dir() / ("cifar-100-binary" if cifar100 else "cifar-10-batches-bin")
    if cached.is_dir():
        return cached
    if download:
        return download_cifar100() if cifar100 else download_cifar10()
    name = "CIFAR-100" if cifar100 else "CIFAR-10"
    raise click.UsageError(
        f"no {name} folder: pass --data DIR (binary or python version), set MDARTS_DATA, or add --download"
    )


def _load_train_data(cfg: Any, quiet: bool = True) -> Any:
    """The training split of ``cfg``'s dataset (a ``datasets.Dataset``), errors as click exceptions."""
    from mdarts_rs.datasets import load_dataset

    try:
        return load_dataset(
            cfg.dataset,
            cfg.data,
            "train",
            label=cfg.label,
            image_size=cfg.image_size,
            skip_bad_images=cfg.skip_bad_images,
            workers=cfg.workers,
            quiet=quiet,
        )
    except (OSError, _core.MdartsError) as e:
        raise click.ClickException((e.strerror if isinstance(e, OSError) and e.strerror else None) or str(e)) from None


def _configs(ctx: click.Context, opts: dict[str, Any]) -> SearchConfig:
    """A SearchConfig from the options, preset values filling whatever was not given explicitly."""
    opts = dict(opts)
    preset = opts.pop("preset")
    data = _resolve_data(opts.pop("data"), opts.pop("download"), opts["dataset"])
    opts.pop("seeds", None)
    for key, value in PRESETS.get(preset or "", {}).items():
        if ctx.get_parameter_source(key) in (click.core.ParameterSource.DEFAULT, None):
            opts[key] = value
    opts["plots"] = not opts.pop("no_plots")
    try:
        return SearchConfig(data=data, **opts)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _run_searches(
    base: SearchConfig, variants: list[tuple[str, dict[str, Any]]], subfolders: bool
) -> tuple[list[tuple[str, SearchConfig, Any]], list[str]]:
    """Run one search per variant (a sub-folder name and config overrides), in ``--out/<name>`` with
    ``subfolders``, else in ``--out`` itself (one variant); returns the results and, with ``subfolders``, a line
    per variant that failed (the others still run). With ``--resume``, a variant whose run finished is kept as it
    is, one that stopped is continued and one without a checkpoint is started afresh."""
    import types
    from datetime import timedelta

    from mdarts_rs.device import resolve_device
    from mdarts_rs.distributed import (
        broadcast_object,
        init_distributed,
        launched_world_size,
        leave_distributed,
        world,
    )
    from mdarts_rs.run import RunFolderBusy, run_search
    from mdarts_rs.search import RanksDisagree, SearchDiverged, SearchInterrupted

    try:
        device = resolve_device(base.device)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--device") from None
    if launched_world_size() > 1:
        if base.cuda_graph and not subfolders:
            raise click.UsageError("--cuda-graph is not supported under torchrun yet: drop it, or run one process")
        # A sweep's ranks wait for the slowest one's runs at the end: no timeout short of a month.
        device = init_distributed(device, timeout=timedelta(days=30) if subfolders else None)
        base = dataclasses.replace(base, device=str(device))
    rank, size = world()
    if rank > 0 and not subfolders:
        base = dataclasses.replace(base, quiet=True)  # rank 0 shows the progress of the search they share
    dataset = _load_train_data(base, quiet=base.quiet or rank > 0)
    results, failed = [], []
    for i, (name, overrides) in enumerate(variants):
        if subfolders and i % size != rank:  # a sweep under torchrun: run i on rank i mod N
            continue
        out = base.out / name if subfolders else base.out
        cfg = dataclasses.replace(base, out=out, **overrides)
        try:
            if cfg.resume:
                finished = _finished_run(cfg) if rank == 0 or subfolders else None
                if size > 1 and not subfolders:  # rank 0's folder decides for all: the others may not see it
                    done = broadcast_object(finished is not None)
                    if done and finished is None:
                        finished = types.SimpleNamespace(genotype=None, history=[], model=None)
                if finished is not None:
                    if rank == 0 or subfolders:
                        click.echo(f"{out}: finished earlier, kept", err=True)
                    results.append((name, cfg, finished))
                    continue
                if subfolders and not (out / "checkpoint.pt").exists():  # never started, or stopped before a checkpoint
                    cfg = dataclasses.replace(cfg, resume=False, overwrite=True)
            # a sweep's run is this process's own: no collectives with the other ranks
            result = run_search(cfg, dataset, world=(0, 1) if subfolders else None)
        except SearchInterrupted as e:
            click.echo(f"interrupted: {e}", err=True)
            sys.exit(130)
        except (SearchDiverged, RunFolderBusy, OSError, ValueError, RuntimeError) as e:
            # OSError: a full disk, an unwritable folder; RuntimeError (out of memory, say): only a sweep's run
            if isinstance(e, RuntimeError) and not isinstance(e, (SearchDiverged, RanksDisagree)) and not subfolders:
                raise
            message = (e.strerror if isinstance(e, OSError) and e.strerror else None) or str(e)
            if not subfolders:
                raise click.ClickException(message) from None
            click.echo(f"{out}: failed: {message}", err=True)
            failed.append(f"{name}: {message}")
            continue
        if not cfg.quiet and (rank == 0 or subfolders):
            click.echo(f"{out}: {result.genotype!r}")
        results.append((name, cfg, result))
    if subfolders and size > 1:
        results, failed = _gather_sweep(base, variants, results, failed)
    leave_distributed()
    return results, failed


def _gather_sweep(
    base: SearchConfig,
    variants: list[tuple[str, dict[str, Any]]],
    results: list[tuple[str, SearchConfig, Any]],
    failed: list[str],
) -> tuple[list[tuple[str, SearchConfig, Any]], list[str]]:
    """Every rank's finished runs (their histories, sent to every rank: no shared filesystem needed) and failures,
    in the variants' order, once all ranks are done; ranks other than 0 return none, so that rank 0 alone writes
    the summary and reports the failures."""
    import types

    from mdarts_rs.distributed import gather_objects, world

    mine = ([(name, result.history) for name, _, result in results], failed)
    gathered = gather_objects(mine)
    if world()[0] != 0:
        return [], []
    histories = {name: history for done, _ in gathered for name, history in done}
    order = {name: i for i, (name, _) in enumerate(variants)}
    all_failed = sorted((line for _, lines in gathered for line in lines), key=lambda ln: order[ln.split(":")[0]])
    all_results = [
        (
            name,
            dataclasses.replace(base, out=base.out / name, **overrides),
            types.SimpleNamespace(genotype=None, history=histories[name], model=None),
        )
        for name, overrides in variants
        if name in histories
    ]
    return all_results, all_failed


def _finish(results: list[tuple[str, SearchConfig, Any]], failed: list[str], out: Path) -> None:
    """Exit non-zero naming the variants that failed, after the others' summary was written."""
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {len(results) + len(failed)} runs in {out} failed:\n" + "\n".join(failed)
        )


def _finished_run(cfg: SearchConfig) -> Any | None:
    """A run in ``cfg.out`` that finished every epoch (its final genotype written, one metrics line per epoch),
    as a result with its history; None otherwise."""
    import types

    from mdarts_rs.genotype import load_genotype
    from mdarts_rs.run import RunFolder

    if not (cfg.out / "genotype.json").is_file():
        return None
    run = RunFolder(cfg.out, create=False)
    history = run.read_metrics()
    if len(history) != cfg.epochs:
        return None
    return types.SimpleNamespace(genotype=load_genotype(run.genotype), history=history, model=None)


def _summary_rows(results: list[tuple[str, SearchConfig, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, cfg, result in results:
        last = result.history[-1]
        rows.append(
            {
                "run": name,
                "alpha_mode": cfg.alpha_mode,
                "gamma": cfg.gamma,
                "seed": cfg.seed,
                "val_acc": round(last["val_acc"], 4),
                "supernet_acc": round(last["gap"]["supernet_acc"], 4),
                "derived_acc": round(last["gap"]["derived_acc"], 4),
                "gap": round(last["gap"]["gap"], 4),
                "mean_entropy": round(sum(last["entropy"].values()) / len(last["entropy"]), 4),
                "skip_connect": last["skip_connect"],
                "genotype": str(cfg.out / "genotype.json"),
            }
        )
    return rows


def _write_summary(out: Path, rows: list[dict[str, Any]]) -> Path:
    from mdarts_rs.run import RunFolder, atomic_write_text

    RunFolder(out).write_json("summary.json", rows)
    cols = [
        "run",
        "alpha_mode",
        "gamma",
        "seed",
        "val_acc",
        "supernet_acc",
        "derived_acc",
        "gap",
        "mean_entropy",
        "skip_connect",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        skips = ", ".join(f"{k}: {v}" for k, v in r["skip_connect"].items())
        lines.append("| " + " | ".join(skips if c == "skip_connect" else str(r[c]) for c in cols) + " |")
    path = out / "summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


@main.command()
@click.option(
    "--alpha-mode",
    type=click.Choice(["multilevel", "shared", "both"]),
    default=_sd("alpha_mode"),
    show_default=True,
    help="multilevel: own α per level (the paper); shared: DARTS; both: one of each from the same seed.",
)
@click.option(
    "--gamma",
    type=FiniteFloat(min=0),
    default=_sd("gamma"),
    show_default=True,
    help="Weight of the entropy term; 0 gives plain multi-level.",
)
@search_options
@click.pass_context
def search(ctx: click.Context, alpha_mode: str, gamma: float, **opts: Any) -> None:
    """Search a cell per level with the entropy heuristic (on CIFAR-10 by default; --dataset for others)."""
    seeds = opts.get("seeds") or [opts["seed"]]
    modes = ["shared", "multilevel"] if alpha_mode == "both" else [alpha_mode]
    base = _configs(ctx, {**opts, "alpha_mode": modes[0], "gamma": gamma})
    variants = [(f"{m}_seed{s}" if len(seeds) > 1 else m, {"alpha_mode": m, "seed": s}) for s in seeds for m in modes]
    results, failed = _run_searches(base, variants, subfolders=len(variants) > 1)
    if len(variants) > 1 and results:
        click.echo(f"summary: {_write_summary(base.out, _summary_rows(results))}")
        if base.plots and alpha_mode == "both" and not failed:
            from mdarts_rs.plots import plot_compare_runs

            (base.out / "plots").mkdir(exist_ok=True)
            plot_compare_runs(
                [cfg.out for _, cfg, _ in results], base.out / "plots" / "skip_connect_shared_vs_multilevel.png"
            )
    _finish(results, failed, base.out)


@main.command()
@click.option(
    "--gamma",
    "gammas",
    callback=_float_list,
    default="0,0.1,1,5,10",
    show_default=True,
    help="Comma-separated γ values.",
)
@click.option("--alpha-mode", type=click.Choice(["multilevel", "shared"]), default=_sd("alpha_mode"), show_default=True)
@search_options
@click.pass_context
def sweep(ctx: click.Context, gammas: list[float], alpha_mode: str, **opts: Any) -> None:
    """The paper's table-1 sweep over γ: one search per value, then a summary table."""
    if not gammas or min(gammas) < 0:
        raise click.BadParameter("expected non-negative γ values", param_hint="--gamma")
    seeds = opts.get("seeds") or [opts["seed"]]
    base = _configs(ctx, {**opts, "alpha_mode": alpha_mode, "gamma": gammas[0]})
    variants = [
        (f"gamma_{g:g}" + (f"_seed{s}" if len(seeds) > 1 else ""), {"gamma": g, "seed": s})
        for g in gammas
        for s in seeds
    ]
    results, failed = _run_searches(base, variants, subfolders=True)
    if results:
        path = _write_summary(base.out, _summary_rows(results))
        click.echo(f"summary: {path}")
        click.echo(path.read_text())
    _finish(results, failed, base.out)


@main.command("build-kernels")
@click.option("--arch", help="CUDA architectures to build for, e.g. 9.0 (default: torch's choice, the GPUs present).")
@click.option("--verbose", is_flag=True, help="Show the compiler's output.")
def build_kernels(arch: str | None, verbose: bool) -> None:
    """Build the fused CUDA kernels now: with the system's nvcc if it matches torch's CUDA version, else with
    NVIDIA's compiler wheels installed from PyPI into the cache (once)."""
    from mdarts_rs.ops.build import build_kernels as build

    try:
        home = build(arch=arch, verbose=verbose)
    except Exception as e:  # a missing toolkit, a pip or compiler failure: say it in a line, no traceback
        first = next((ln for ln in str(e).strip().splitlines() if ln.strip()), type(e).__name__)
        raise click.ClickException(f"could not build the CUDA kernels: {first[:300]}") from None
    click.echo(f"built the CUDA kernels with {home / 'bin' / 'nvcc'}")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG to write.")
def plot(runs: tuple[Path, ...], out: Path) -> None:
    """Plot skip_connect per level over epochs for finished runs (e.g. shared against multilevel)."""
    from mdarts_rs.plots import plot_compare_runs

    try:
        plot_compare_runs(list(runs), out)
    except (OSError, ValueError, KeyError) as e:
        raise click.ClickException(f"cannot plot: {e}") from None
    click.echo(str(out))


@main.command()
@click.argument("genotype")
@click.option(
    "--imagenet-size",
    type=click.IntRange(min=32, max=1024),
    default=224,
    show_default=True,
    help="Input side for the ImageNet MACs.",
)
@click.option(
    "--image-size",
    "image_sizes",
    type=click.IntRange(4, _core.MAX_SIDE),
    multiple=True,
    help="Also show the CIFAR network on inputs of this side (repeatable), with the stem that size gets.",
)
@click.option("--channels", type=click.IntRange(1, _core.MAX_IMAGE_CHANNELS), default=3, show_default=True)
@click.option("--classes", type=click.IntRange(2, 100_000), default=10, show_default=True)
def info(genotype: str, imagenet_size: int, image_sizes: tuple[int, ...], channels: int, classes: int) -> None:
    """Parameters and multiply-accumulates of GENOTYPE's evaluation networks (a genotype file or text)."""
    from mdarts_rs.evaluate.network import count_macs, count_params, eval_network
    from mdarts_rs.genotype import load_genotype
    from mdarts_rs.geometry import describe_stem

    try:
        g = load_genotype(genotype)
    except (OSError, _core.MdartsError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(repr(g))
    click.echo(f"\n{'network':<34}{'params':>12}{'MACs':>16}")
    for name, dataset, size in (
        ("CIFAR-10 (20 cells, C = 36)", "cifar10", 32),
        ("ImageNet (14 cells, C = 48)", "imagenet", imagenet_size),
    ):
        net = eval_network(g, dataset)
        click.echo(f"{name:<34}{count_params(net):>12,}{count_macs(net, (3, size, size)):>16,}")
    for size in image_sizes:
        try:
            net = eval_network(g, "folder", num_classes=classes, in_channels=channels, image_size=size)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--image-size") from None
        name = f"{channels}x{size}x{size}, {classes} classes"
        click.echo(f"{name:<34}{count_params(net):>12,}{count_macs(net, (channels, size, size)):>16,}")
        click.echo(f"  stem: {describe_stem(size)}")
    click.echo("\nparams: network weights without the auxiliary head; MACs: convolutions and linear layers, batch 1.")


@main.command()
@click.option(
    "--genotype", required=True, help="genotype.json of a search, a DARTS-style text file, or the text itself."
)
@click.option(
    "--data", type=click.Path(path_type=Path), help=_DATA_HELP + " For imagenet: a folder with train/ and val/."
)
@click.option(
    "--out", metavar="DIR", callback=_run_folder, default=str(_default(TrainConfig, "out")), show_default=True
)
@_options(_data_options(train=True))
@click.option(
    "--holdout",
    type=FiniteFloat(0, 1, min_open=True, max_open=True),
    default=_default(TrainConfig, "holdout"),
    show_default=True,
    help="Data without a test set (a folder without train/ and val/, arrays without test_images): the part of "
    "its images held out as the test set, drawn from --seed and saved in the checkpoint.",
)
@click.option("--epochs", type=click.IntRange(min=1))
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=_core.MAX_BATCH_SIZE),
    help="Global batch (split over torchrun processes).",
)
@click.option("--lr", type=FiniteFloat(min=0, min_open=True))
@click.option("--lr-schedule", type=click.Choice(["cosine", "linear"]))
@click.option("--warmup-epochs", type=click.IntRange(min=0))
@click.option("--momentum", type=FiniteFloat(0, 1))
@click.option("--weight-decay", type=FiniteFloat(min=0))
@click.option("--grad-clip", type=FiniteFloat(min=0, min_open=True))
@click.option("--init-channels", type=click.IntRange(min=2, max=MAX_CHANNELS))
@click.option("--layers", type=click.IntRange(min=3, max=_core.MAX_LAYERS))
@click.option("--auxiliary/--no-auxiliary", default=None)
@click.option("--auxiliary-weight", type=FiniteFloat(min=0))
@click.option("--cutout", type=click.IntRange(0, 32))
@click.option("--drop-path", type=FiniteFloat(0, 1, max_open=True))
@click.option("--label-smoothing", type=FiniteFloat(0, 1, max_open=True))
@click.option(
    "--seed", type=click.IntRange(min=0, max=_MAX_SEED), default=_default(TrainConfig, "seed"), show_default=True
)
@click.option("--seeds", callback=_int_list, help="Comma-separated seeds: one training each, in --out/seed<N>.")
@click.option("--device", default=_default(TrainConfig, "device"), show_default=True)
@click.option("--workers", type=click.IntRange(min=0, max=_core.MAX_WORKERS))
@click.option("--bf16", is_flag=True, help="bfloat16 autocast.")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), help="Cap the steps of each epoch (smoke runs).")
@click.option("--resume", is_flag=True)
@click.option("--overwrite", is_flag=True, help="Replace the run files already in --out.")
@click.option("--quiet", is_flag=True)
def train(**opts: Any) -> None:
    """Train an evaluation network from scratch (DARTS' CIFAR-10 recipe for CIFAR-10, CIFAR-100 and your own
    data; or the ImageNet recipe)."""
    from mdarts_rs.config import RECIPES, TrainConfig
    from mdarts_rs.evaluate import train as run_train

    seeds = opts.pop("seeds") or [opts["seed"]]
    given = {k: v for k, v in opts.items() if v is not None}
    base = {**RECIPES[opts["dataset"]], **given}
    if opts["dataset"] != "imagenet" and "data" not in given:
        base["data"] = _resolve_data(None, False, opts["dataset"])
    for seed in seeds:
        out = base["out"] / f"seed{seed}" if len(seeds) > 1 else base["out"]
        try:
            cfg = TrainConfig(**{**base, "seed": seed, "out": out})
            history = run_train(cfg)
        except (FileExistsError, FileNotFoundError, FloatingPointError, RuntimeError, _core.MdartsError) as e:
            raise click.ClickException(str(e)) from None
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        except OSError as e:  # an unwritable folder, a full disk: the message names the file
            raise click.ClickException(e.strerror or str(e)) from None
        last = history[-1]
        click.echo(
            f"{out}: top-1 error {last['top1_err']:.4f}, top-5 error {last['top5_err']:.4f} after {len(history)} epochs"
        )


@main.command()
@_trained_checkpoint
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="The data the network was trained on (default: the path its checkpoint recorded).",
)
@click.option(
    "--dataset",
    type=click.Choice(_DATASET_CHOICES),
    help="The kind of data (default: the checkpoint's; given, it must be the checkpoint's).",
)
@click.option("--device", default="auto", show_default=True)
def test(checkpoint: Path, data: Path | None, dataset: str | None, device: str) -> None:
    """Top-1 and top-5 error of a trained network on its dataset's test set (CIFAR-10/100's test files, an
    arrays file's test arrays, a folder's val/, or the images its training held out)."""
    from mdarts_rs.device import resolve_device
    from mdarts_rs.evaluate import evaluate_checkpoint
    from mdarts_rs.run import read_checkpoint

    try:
        resolve_device(device)  # a bad device name first, before any file is read
        state = read_checkpoint(checkpoint, "train")
        trained_on = state["config"].get("dataset", "cifar10")
        if dataset is not None and dataset != trained_on:
            raise ValueError(f"{checkpoint}: the network was trained on {trained_on}, not {dataset}")
        recorded = (state.get("dataset") or {}).get("path")
        if data is None and recorded is not None:
            data = Path(recorded)
        r = evaluate_checkpoint(checkpoint, _resolve_data(data, False, trained_on), device)
    except (OSError, ValueError) as e:
        raise click.ClickException((e.strerror if isinstance(e, OSError) and e.strerror else None) or str(e)) from None
    click.echo(json.dumps(r))


@main.command()
@_trained_checkpoint
@click.option("--format", "fmt", type=click.Choice(["onnx", "pt2", "torchscript"]), required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
def export(checkpoint: Path, fmt: str, out: Path) -> None:
    """Export a trained network (eval mode, no auxiliary head, any batch size), verified by loading it back with
    its own runtime; its input size, normalisation and class names go to OUT.json."""
    from mdarts_rs.evaluate.trained import ExportError, export, load_trained

    try:
        diff = export(load_trained(checkpoint), fmt, out)
    except (ExportError, OSError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{out}: {fmt}, outputs within {diff:.2g} of the network's; metadata in {out}.json")


@main.command()
@_trained_checkpoint
@click.option("--top", type=click.IntRange(1, 100), default=5, show_default=True, help="Classes shown per image.")
@click.option("--device", default="cpu", show_default=True)
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def predict(checkpoint: Path, top: int, device: str, images: tuple[Path, ...]) -> None:
    """The most likely classes of each IMAGE (PNG, JPEG, ...; resized and normalised as the network was trained)."""
    from mdarts_rs.device import resolve_device
    from mdarts_rs.evaluate.trained import load_trained, predict

    try:
        trained = load_trained(checkpoint, resolve_device(device))
        results = predict(trained, list(images), top)
    except (OSError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    for path, classes in zip(images, results):
        click.echo(f"{path}:")
        for name, p in classes:
            click.echo(f"  {p:7.2%}  {name}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
