"""The ``mdarts-rs`` command line: options generated from the config fields (``mdarts_rs.config``), turned into
configs, handed to one library function per command; the results printed and the errors turned into messages."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from mdarts_rs import _core, experiments
from mdarts_rs.config import (
    DATASETS,
    MAX_SEED,
    PRESETS,
    PROTOCOL_OWNS,
    RECIPES,
    ConfigError,
    ProtocolConfig,
    SearchConfig,
    TrainConfig,
)
from mdarts_rs.data import DataLocationError, resolve_data
from mdarts_rs.evaluate import test_checkpoint, train_seeds
from mdarts_rs.evaluate.network import count_macs, count_params, eval_network
from mdarts_rs.evaluate.trained import export_checkpoint, load_trained, predict
from mdarts_rs.genotype import load_genotype
from mdarts_rs.geometry import describe_stem
from mdarts_rs.ops import build_kernels
from mdarts_rs.options import (
    Decorator,
    FiniteFloat,
    combined,
    comma_list,
    config_file_options,
    config_options,
    file_settings,
    given,
    prefixed,
    print_config,
    with_defaults,
)
from mdarts_rs.plots import plot_compare_runs
from mdarts_rs.protocol import rebuild_report, run_protocol
from mdarts_rs.search import SearchInterrupted


@contextmanager
def _messages(usage: tuple[type[BaseException], ...] = (ConfigError, DataLocationError)) -> Iterator[None]:
    """A library error as a message without a traceback: settings (``usage``) exit 2, the others 1; an interrupted
    search exits 130 saying how to continue."""
    try:
        yield
    except SearchInterrupted as e:
        click.echo(f"interrupted: {e}", err=True)
        sys.exit(130)
    except usage as e:
        raise click.UsageError(str(e)) from None
    except (OSError, ValueError, RuntimeError, _core.MdartsError) as e:
        raise click.ClickException((e.strerror if isinstance(e, OSError) and e.strerror else None) or str(e)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(_core.__version__, prog_name="mdarts-rs")
def main() -> None:
    """Multi-level differentiable architecture search with heuristic entropy (Li, Chen, Sun 2021)."""


@main.command()
def space() -> None:
    """Print the exact sizes of the DARTS and multi-level search spaces."""
    click.echo(f"{'space':<16}{'kind':<10}{'about':>10}  exact")
    for mode, name in (("shared", "DARTS (shared)"), ("multilevel", "multi-level")):
        for derived in (False, True):
            n = _core.search_space_size(mode, derived=derived)
            kind = "derived" if derived else "supernet"
            click.echo(f"{name:<16}{kind:<10}{f'10^{math.log10(n):.2f}':>10}  {n}")
    click.echo(
        f"\nA derived cell: {_core.derived_cell_count()} choices "
        f"(2 of each node's incoming edges, one of {len(_core.PRIMITIVES) - 1} ops per kept edge)."
    )


@main.command()
@click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED), default=0, show_default=True, help="Random seed.")
@click.option("--alpha-mode", type=click.Choice(["multilevel", "shared"]), default="multilevel", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["json", "text"]), default="json", show_default=True)
def sample(seed: int, alpha_mode: str, fmt: str) -> None:
    """Print a genotype drawn uniformly from the derived space (the random-search baseline)."""
    g = _core.sample_genotype(seed, alpha_mode)
    click.echo(g.to_json() if fmt == "json" else repr(g))


def _search_options(skip: tuple[str, ...]) -> Decorator:
    """The options of search and sweep: the SearchConfig fields but ``skip`` (which the command defines), a preset,
    seeds and the download."""
    return combined(
        click.option("--seeds", callback=comma_list(int, "integers"), help="Comma-separated seeds: one search each."),
        click.option(
            "--preset",
            type=click.Choice(sorted(PRESETS)),
            help="quick: a small supernet on a data subset (minutes on a CPU); paper: the defaults.",
        ),
        click.option(
            "--download",
            is_flag=True,
            help="Download CIFAR-10 or CIFAR-100 (checked against its MD5) when no data folder is found.",
        ),
        *config_file_options,
        config_options(SearchConfig, skip=skip),
        click.pass_context,
    )


def _data_of(settings: dict[str, Any], download: bool = False) -> Path | None:
    """The data of a command's settings (``data`` and ``print_config`` popped): found where it is not given (and
    downloaded with ``download``), unless the command only prints its settings or reads an ImageNet folder."""
    given_data = settings.pop("data")
    data = None if given_data is None else Path(given_data)
    if settings.pop("print_config") or settings["dataset"] == "imagenet":
        return data
    return resolve_data(data, download, settings["dataset"])


def _search_settings(ctx: click.Context, opts: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """The settings of search or sweep (the --config file, then the preset, filling what was not given; the data
    folder found unless only printing) and the seeds."""
    preset = PRESETS.get(opts.pop("preset") or "", {})
    settings = with_defaults(ctx, opts, {**preset, **file_settings(opts, SearchConfig)})
    seeds = settings.pop("seeds") or [settings["seed"]]
    data = _data_of(settings, settings.pop("download"))
    return {**settings, "data": data}, seeds


def _say(text: str, err: bool = False) -> None:
    click.echo(text, err=err)


def _report(job: experiments.JobResult, out: Path, show_table: bool = False) -> None:
    """Print a job's summary; exit non-zero naming the runs that failed, after the others' summary was written."""
    if job.summary is not None:
        click.echo(f"summary: {job.summary}")
        if show_table:
            click.echo(job.summary.read_text())
    if job.failed:
        total = len(job.runs) + len(job.failed)
        raise click.ClickException(f"{len(job.failed)} of {total} runs in {out} failed:\n" + "\n".join(job.failed))


@main.command()
@click.option(
    "--alpha-mode",
    type=click.Choice(["multilevel", "shared", "both"]),
    default="multilevel",
    show_default=True,
    help="multilevel: own α per level (the paper); shared: DARTS; both: one of each from the same seed.",
)
@click.option(
    "--gamma",
    type=FiniteFloat(min=0),
    default=1.0,
    show_default=True,
    help="Weight of the entropy term; 0 gives plain multi-level.",
)
@_search_options(skip=("alpha_mode", "gamma"))
def search(ctx: click.Context, alpha_mode: str, gamma: float, **opts: Any) -> None:
    """Search a cell per level with the entropy heuristic (on CIFAR-10 by default; --dataset for others)."""
    file = opts["config_file"]
    with _messages():
        settings, seeds = _search_settings(ctx, {**opts, "alpha_mode": alpha_mode, "gamma": gamma})
        modes = ["shared", "multilevel"] if settings["alpha_mode"] == "both" else [settings["alpha_mode"]]
        cfg = SearchConfig(**{**settings, "alpha_mode": modes[0]})
        if print_config(cfg, opts, file):
            return
        job = experiments.search(cfg, modes, seeds, say=_say)
    _report(job, cfg.out)


@main.command()
@click.option(
    "--gamma",
    "gammas",
    callback=comma_list(float, "numbers"),
    default="0,0.1,1,5,10",
    show_default=True,
    help="Comma-separated γ values.",
)
@_search_options(skip=("gamma",))
def sweep(ctx: click.Context, gammas: list[float], **opts: Any) -> None:
    """The paper's table-1 sweep over γ: one search per value, then a summary table."""
    if not gammas or min(gammas) < 0:
        raise click.BadParameter("expected non-negative γ values", param_hint="--gamma")
    file = opts["config_file"]
    with _messages():
        settings, seeds = _search_settings(ctx, opts)
        cfg = SearchConfig(**{**settings, "gamma": gammas[0]})
        if print_config(cfg, opts, file):
            return
        job = experiments.sweep(cfg, gammas, seeds, say=_say)
    _report(job, cfg.out, show_table=True)


@main.command("build-kernels")
@click.option("--arch", help="CUDA architectures to build for, e.g. 9.0 (default: torch's choice, the GPUs present).")
@click.option("--verbose", is_flag=True, help="Show the compiler's output.")
def build_kernels_command(arch: str | None, verbose: bool) -> None:
    """Build the fused CUDA kernels now: with the system's nvcc if it matches torch's CUDA version, else with
    NVIDIA's compiler wheels installed from PyPI into the cache (once)."""
    try:
        home = build_kernels(arch=arch, verbose=verbose)
    except Exception as e:  # a missing toolkit, a pip or compiler failure: say it in a line, no traceback
        first = next((ln for ln in str(e).strip().splitlines() if ln.strip()), type(e).__name__)
        raise click.ClickException(f"could not build the CUDA kernels: {first[:300]}") from None
    click.echo(f"built the CUDA kernels with {home / 'bin' / 'nvcc'}")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG to write.")
def plot(runs: tuple[Path, ...], out: Path) -> None:
    """Plot skip_connect per level over epochs for finished runs (e.g. shared against multilevel)."""
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
    with _messages(usage=()):
        g = load_genotype(genotype)
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
@combined(*config_file_options)
@config_options(TrainConfig)
@click.option(
    "--seeds", callback=comma_list(int, "integers"), help="Comma-separated seeds: one training each, in --out/seed<N>."
)
@click.pass_context
def train(ctx: click.Context, seeds: list[int] | None, **opts: Any) -> None:
    """Train an evaluation network from scratch (DARTS' CIFAR-10 recipe for CIFAR-10, CIFAR-100 and your own
    data; or the ImageNet recipe)."""
    file = opts["config_file"]
    with _messages():
        from_file = file_settings(opts, TrainConfig)
        dataset = opts["dataset"] if given(ctx, "dataset") else from_file.get("dataset", opts["dataset"])
        settings = with_defaults(ctx, opts, {**RECIPES.get(dataset, {}), **from_file})
        data = _data_of(settings)
        cfg = TrainConfig(**settings, data=data)
        if print_config(cfg, opts, file):
            return
        train_seeds(cfg, seeds or [cfg.seed], say=click.echo)


#: The checkpoint of a trained network, for test, export and predict.
_trained_checkpoint = click.option(
    "--checkpoint",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="checkpoint.pt of a `mdarts-rs train` run.",
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
    type=click.Choice(list(DATASETS)),
    help="The kind of data (default: the checkpoint's; given, it must be the checkpoint's).",
)
@click.option("--device", default="auto", show_default=True)
def test(checkpoint: Path, data: Path | None, dataset: str | None, device: str) -> None:
    """Top-1 and top-5 error of a trained network on its dataset's test set (CIFAR-10/100's test files, an
    arrays file's test arrays, a folder's val/, or the images its training held out)."""
    with _messages(usage=()):
        click.echo(json.dumps(test_checkpoint(checkpoint, data, dataset, device)))


@main.command("export")
@_trained_checkpoint
@click.option("--format", "fmt", type=click.Choice(["onnx", "pt2", "torchscript"]), required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT (and OUT.json) where they exist.")
def export_command(checkpoint: Path, fmt: str, out: Path, overwrite: bool) -> None:
    """Export a trained network (eval mode, no auxiliary head, any batch size), verified by loading it back with
    its own runtime; its input size, normalisation and class names go to OUT.json."""
    with _messages(usage=()):
        diff = export_checkpoint(checkpoint, fmt, out, overwrite)
    click.echo(f"{out}: {fmt}, outputs within {diff:.2g} of the network's; metadata in {out}.json")


@main.command("predict")
@_trained_checkpoint
@click.option("--top", type=click.IntRange(1, 100), default=5, show_default=True, help="Classes shown per image.")
@click.option("--device", default="cpu", show_default=True)
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def predict_command(checkpoint: Path, top: int, device: str, images: tuple[Path, ...]) -> None:
    """The most likely classes of each IMAGE (PNG, JPEG, ...; resized and normalised as the network was trained)."""
    with _messages(usage=()):
        results = predict(load_trained(checkpoint, device), list(images), top)
    for path, classes in zip(images, results):
        click.echo(f"{path}:")
        for name, p in classes:
            click.echo(f"  {p:7.2%}  {name}")


@main.command("protocol")
@combined(*config_file_options)
@config_options(ProtocolConfig)
@config_options(SearchConfig, skip=PROTOCOL_OWNS, prefix="search-")
@config_options(TrainConfig, skip=PROTOCOL_OWNS, prefix="train-")
@click.pass_context
def protocol_command(ctx: click.Context, **opts: Any) -> None:
    """The paper's experiments as one resumable job: searches for every γ, α mode and seed; the selection of each
    (γ, α mode)'s cell by a short training scored on a validation split; final trainings tested on the test set;
    report.md and report.json in --out. --search-* and --train-* set the runs' settings over the preset's."""
    file = opts["config_file"]
    with _messages():
        settings = with_defaults(ctx, opts, file_settings(opts, ProtocolConfig))
        search, train = prefixed(settings, "search_"), prefixed(settings, "train_")
        data = _data_of(settings)
        cfg = ProtocolConfig(**settings, data=data, search=search, train=train)
        if print_config(cfg, opts, file):
            return
        result = run_protocol(cfg, say=lambda t: click.echo(t, err=True))
    click.echo(f"report: {cfg.out / 'report.md'}")
    for row in result["table1"]:
        if row["mean"] is not None:
            click.echo(f"  {row['row']}: {row['mean']:.2f} ± {row['std']:.2f} % test error over {row['runs']} runs")
    if result["failures"]:
        lines = [f"{f['run']}: {f['error']}" for f in result["failures"]]
        raise click.ClickException(
            f"{len(lines)} run{'s' if len(lines) > 1 else ''} in {cfg.out} failed (--resume tries them again):\n"
            + "\n".join(lines)
        )


@main.command("report")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report_command(folder: Path) -> None:
    """Rebuild a protocol's report.md and report.json from its run folders alone."""
    with _messages(usage=()):
        rebuild_report(folder)
    click.echo(str(folder / "report.md"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
