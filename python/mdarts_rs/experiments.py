"""Many searches as one job: a search in several α modes and seeds, the paper's γ sweep, spread over torchrun ranks,
each in a run folder of its own, then a summary table. The library functions the CLI's ``search`` and ``sweep``
call, with the same result from Python."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from mdarts_rs import _core, plots
from mdarts_rs.config import ConfigError, SearchConfig
from mdarts_rs.data import Dataset, load_split
from mdarts_rs.device import resolve_device
from mdarts_rs.distributed import (
    broadcast_object,
    gather_objects,
    init_distributed,
    launched_world_size,
    leave_distributed,
    rank_loss_said,
    world,
)
from mdarts_rs.genotype import load_genotype
from mdarts_rs.run import COMPARE_PLOT, RunFolder, RunFolderBusy, atomic_write_text
from mdarts_rs.search import RanksDisagree, SearchDiverged, SearchInterrupted, run_search

#: A run of a job: its sub-folder's name and the settings in which it differs from the job's.
Variant = tuple[str, dict[str, Any]]
#: Where a job's progress lines go: ``say(text, err)``, ``err`` for those about failures and kept runs.
Say = Callable[[str, bool], None]


def _print(text: str, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout)


@dataclass
class RunOutcome:
    """A finished run of a job: its name, settings, every epoch's record and the genotype it found (None where
    only its records came from another rank)."""

    name: str
    cfg: SearchConfig
    history: list[dict[str, Any]]
    genotype: _core.Genotype | _core.MultiLevelGenotype | None = None


@dataclass
class JobResult:
    """What a job of searches leaves: the finished runs, a line per failed run, and the summary it wrote."""

    runs: list[RunOutcome]
    failed: list[str]
    summary: Path | None = None


def search_variants(alpha_modes: list[str], seeds: list[int]) -> list[Variant]:
    """One search per α mode and seed (named by mode, and by seed where there are several)."""
    return [(f"{m}_seed{s}" if len(seeds) > 1 else m, {"alpha_mode": m, "seed": s}) for s in seeds for m in alpha_modes]


def sweep_variants(gammas: list[float], seeds: list[int]) -> list[Variant]:
    """One search per γ and seed: the paper's table 1."""
    return [
        (f"gamma_{g:g}" + (f"_seed{s}" if len(seeds) > 1 else ""), {"gamma": g, "seed": s})
        for g in gammas
        for s in seeds
    ]


def finished_run(cfg: SearchConfig, name: str = "") -> RunOutcome | None:
    """The run in ``cfg.out`` if it finished every epoch (its final genotype written, one metrics line per epoch);
    None otherwise."""
    if not (cfg.out / "genotype.json").is_file():
        return None
    run = RunFolder(cfg.out, create=False)
    history = run.read_metrics()
    if len(history) != cfg.epochs:
        return None
    return RunOutcome(name, cfg, history, load_genotype(run.genotype))


def _join_ranks(base: SearchConfig, spread: bool) -> SearchConfig:
    """Join torchrun's process group (nothing in one process): one search on every rank, or (``spread``) whole runs
    spread over the ranks; ``base`` with this rank's device, quiet on ranks other than 0 of a shared search."""
    try:
        device = resolve_device(base.device)
    except ValueError as e:
        raise ConfigError(f"--device: {e}") from None
    if launched_world_size() > 1:
        base.check_world(1 if spread else launched_world_size())
        # A sweep's ranks wait for the slowest one's runs at the end: no timeout short of a month.
        device = init_distributed(device, timeout=timedelta(days=30) if spread else None)
        base = dataclasses.replace(base, device=str(device))
    if world()[0] > 0 and not spread:
        base = dataclasses.replace(base, quiet=True)  # rank 0 shows the progress of the search they share
    return base


def _kept_if_finished(cfg: SearchConfig, name: str, spread: bool) -> RunOutcome | None:
    """With ``--resume``, the run in ``cfg.out`` if it finished earlier (decided by rank 0 for a shared search)."""
    rank, size = world()
    finished = finished_run(cfg, name) if rank == 0 or spread else None
    if size > 1 and not spread and broadcast_object(finished is not None) and finished is None:
        finished = RunOutcome(name, cfg, [])  # rank 0's folder decides for all: the others may not see it
    return finished


def _run_one(cfg: SearchConfig, name: str, data: Dataset, spread: bool, say: Say) -> RunOutcome:
    """One search of a job (continued, kept or started afresh with ``--resume``)."""
    rank = world()[0]
    if cfg.resume:
        kept = _kept_if_finished(cfg, name, spread)
        if kept is not None:
            if rank == 0 or spread:
                say(f"{cfg.out}: finished earlier, kept", True)
            return kept
        if spread and not (cfg.out / "checkpoint.pt").exists():  # never started, or stopped before a checkpoint
            cfg = dataclasses.replace(cfg, resume=False, overwrite=True)
    # a spread run is this process's own: no collectives with the other ranks
    result = run_search(cfg, data, world=(0, 1) if spread else None)
    if not cfg.quiet and (rank == 0 or spread):
        say(f"{cfg.out}: {result.genotype!r}", False)
    return RunOutcome(name, cfg, result.history, result.genotype)


def run_searches(
    base: SearchConfig, variants: list[Variant], subfolders: bool, data: Dataset | None = None, say: Say = _print
) -> JobResult:
    """Run one search per variant, in ``base.out/<name>`` with ``subfolders``, else in ``base.out`` itself (one
    variant), on ``data`` (by default ``base``'s training images). With ``subfolders`` a failed run is reported
    and the others still run (its line in ``failed``); with ``--resume`` a finished run is kept as it is, a
    stopped one continued and one without a checkpoint started afresh. Under torchrun the runs of a job with
    sub-folders spread over the ranks (run i on rank i mod N), a single search runs on all of them together."""
    base = _join_ranks(base, subfolders)
    with rank_loss_said(lambda: f"the runs that finished are kept in {base.out}"):
        return _run_variants(base, variants, subfolders, data, say)


def _run_variants(
    base: SearchConfig, variants: list[Variant], subfolders: bool, data: Dataset | None, say: Say
) -> JobResult:
    """``run_searches`` once the ranks are joined."""
    rank, size = world()
    if data is None:
        data = load_split(base, quiet=base.quiet or rank > 0)
    runs, failed = [], []
    for i, (name, overrides) in enumerate(variants):
        if subfolders and i % size != rank:
            continue
        cfg = dataclasses.replace(base, out=base.out / name if subfolders else base.out, **overrides)
        try:
            runs.append(_run_one(cfg, name, data, subfolders, say))
        except SearchInterrupted:
            raise
        except (SearchDiverged, RanksDisagree, RunFolderBusy, OSError, ValueError, RuntimeError) as e:
            # OSError: a full disk, an unwritable folder; RuntimeError (out of memory, say): only a job's run
            if not subfolders:
                raise
            message = (e.strerror if isinstance(e, OSError) and e.strerror else None) or str(e)
            say(f"{cfg.out}: failed: {message}", True)
            failed.append(f"{name}: {message}")
    if subfolders and size > 1:
        runs, failed = _gather(base, variants, runs, failed)
    leave_distributed()
    return JobResult(runs, failed)


def _gather(
    base: SearchConfig, variants: list[Variant], runs: list[RunOutcome], failed: list[str]
) -> tuple[list[RunOutcome], list[str]]:
    """Every rank's finished runs (their records, sent to every rank: no shared filesystem needed) and failures, in
    the variants' order, once all ranks are done; ranks other than 0 return none, so that rank 0 alone writes the
    summary and reports the failures."""
    gathered = gather_objects(([(r.name, r.history) for r in runs], failed))
    if world()[0] != 0:
        return [], []
    histories = {name: history for done, _ in gathered for name, history in done}
    order = {name: i for i, (name, _) in enumerate(variants)}
    all_failed = sorted((line for _, lines in gathered for line in lines), key=lambda ln: order[ln.split(":")[0]])
    all_runs = [
        RunOutcome(name, dataclasses.replace(base, out=base.out / name, **overrides), histories[name])
        for name, overrides in variants
        if name in histories
    ]
    return all_runs, all_failed


def summary_rows(runs: list[RunOutcome]) -> list[dict[str, Any]]:
    """A summary row per run: its settings that vary, the last epoch's accuracies, gap, entropy and skip_connect."""
    rows = []
    for r in runs:
        last = r.history[-1]
        rows.append(
            {
                "run": r.name,
                "alpha_mode": r.cfg.alpha_mode,
                "gamma": r.cfg.gamma,
                "seed": r.cfg.seed,
                "val_acc": round(last["val_acc"], 4),
                "supernet_acc": round(last["gap"]["supernet_acc"], 4),
                "derived_acc": round(last["gap"]["derived_acc"], 4),
                "gap": round(last["gap"]["gap"], 4),
                "mean_entropy": round(sum(last["entropy"].values()) / len(last["entropy"]), 4),
                "skip_connect": last["skip_connect"],
                "genotype": str(r.cfg.out / "genotype.json"),
            }
        )
    return rows


_SUMMARY_COLUMNS = ("run", "alpha_mode", "gamma", "seed", "val_acc", "supernet_acc", "derived_acc", "gap")


def write_summary(out: Path, rows: list[dict[str, Any]]) -> Path:
    """``summary.json`` and the table ``summary.md`` of a job's runs into ``out``; returns the table's path."""
    RunFolder(out).write_json("summary.json", rows)
    cols = [*_SUMMARY_COLUMNS, "mean_entropy", "skip_connect"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        skips = ", ".join(f"{k}: {v}" for k, v in r["skip_connect"].items())
        lines.append("| " + " | ".join(skips if c == "skip_connect" else str(r[c]) for c in cols) + " |")
    path = out / "summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def search(
    base: SearchConfig, alpha_modes: list[str], seeds: list[int], data: Dataset | None = None, say: Say = _print
) -> JobResult:
    """``mdarts-rs search``: a search per α mode and seed, in ``base.out`` where there is one, else in sub-folders
    with a summary (and, for both modes from the same seed, their skip_connect curves in one figure)."""
    variants = search_variants(alpha_modes, seeds)
    several = len(variants) > 1
    job = run_searches(base, variants, subfolders=several, data=data, say=say)
    if several and job.runs:
        job.summary = write_summary(base.out, summary_rows(job.runs))
        if base.plots and len(alpha_modes) == 2 and not job.failed and world()[0] == 0:
            (base.out / "plots").mkdir(exist_ok=True)
            figure = base.out / "plots" / COMPARE_PLOT
            plots.plot_compare_runs([r.cfg.out for r in job.runs], figure)
    return job


def sweep(
    base: SearchConfig, gammas: list[float], seeds: list[int], data: Dataset | None = None, say: Say = _print
) -> JobResult:
    """``mdarts-rs sweep``: the paper's table 1, one search per γ (and seed) in sub-folders, then the summary."""
    if not gammas or min(gammas) < 0:
        raise ConfigError("expected non-negative γ values")
    job = run_searches(base, sweep_variants(gammas, seeds), subfolders=True, data=data, say=say)
    if job.runs:
        job.summary = write_summary(base.out, summary_rows(job.runs))
    return job
