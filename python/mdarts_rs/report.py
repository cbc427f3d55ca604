"""A protocol's report, built from its run folders alone: table 1 (the final trainings' test errors per α mode
and γ, mean ± std, the selected cell's size, the search's time, the paper's number beside it), the selection
table, figures, the failures, and the command that runs the protocol again (``report.md``, ``report.json``)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mdarts_rs import plots
from mdarts_rs.config import PROTOCOL_PRESETS, ProtocolConfig, SearchConfig, TrainConfig
from mdarts_rs.evaluate.network import count_macs, count_params
from mdarts_rs.evaluate.trained import trained_network
from mdarts_rs.genotype import load_genotype
from mdarts_rs.run import atomic_write_text, read_metrics


class Job(Protocol):
    """A run of a protocol (``mdarts_rs.protocol.Job``)."""

    name: str
    folder: Path
    cfg: SearchConfig | TrainConfig


class Runs(Protocol):
    """What the report reads of a protocol (``mdarts_rs.protocol.Protocol``): its settings, folder and runs."""

    cfg: ProtocolConfig
    out: Path
    say: Callable[[str], None]

    def searches(self) -> list[Job]: ...

    def train_config(self, genotype: Path, out: Path, seed: int, selection: bool) -> TrainConfig: ...


#: Test error (%) on CIFAR-10 of the paper's table 1 (Li, Chen, Sun 2021: multi-level search, mean over searches
#: per γ) and of DARTS' first-order search (Liu et al. 2019, table 1: 3.00 ± 0.14, no entropy term).
PAPER_ERRORS = {("multilevel", 0.0): 3.14, ("multilevel", 0.1): 3.05, ("multilevel", 1.0): 3.00}
PAPER_ERRORS |= {("multilevel", 5.0): 3.28, ("multilevel", 10.0): 3.64, ("shared", 0.0): 3.00}


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _history(folder: Path) -> list[dict[str, Any]]:
    """The epochs a run finished; none where its record is damaged (its status says so)."""
    try:
        return read_metrics(folder / "metrics.jsonl")
    except ValueError:
        return []


def _status(folder: Path, epochs: int) -> str:
    failed = _json(folder / "failed.json")
    if failed is not None:
        return f"failed: {failed.get('error', '?')}"
    try:
        done = len(read_metrics(folder / "metrics.jsonl"))
    except ValueError as e:
        return f"damaged: {e}"
    if done == epochs and (folder / "checkpoint.pt").is_file():
        return "finished"
    return f"{done} of {epochs} epochs" if done else "not started"


def _error(folder: Path, epochs: int) -> float | None:
    """A finished training's last top-1 error (%), else None."""
    history = _history(folder)
    return round(100 * history[-1]["top1_err"], 4) if len(history) == epochs else None


def selected(protocol: Runs) -> dict[str, str | None]:
    """Each row's selected search folder: the lowest selection error among its searches' finished selection
    trainings (the first seed on a tie); None where no selection finished."""
    epochs = protocol.cfg.selection_epochs()
    out: dict[str, str | None] = {}
    for mode in protocol.cfg.alpha_modes:
        for gamma in protocol.cfg.gammas:
            scores = []
            for seed in protocol.cfg.seeds:
                name = f"{mode}_gamma{gamma:g}_seed{seed}"
                err = _error(protocol.out / "select" / name, epochs)
                if err is not None:
                    scores.append((err, str(protocol.out / "search" / name)))
            out[f"{mode}_gamma{gamma:g}"] = min(scores, key=lambda t: t[0])[1] if scores else None
    return out


def _cell_size(search: Path, protocol: Runs) -> tuple[int, int] | None:
    """Parameters and multiply-accumulates of a search's cell in the final training's network."""
    config = _json(search / "config.json") or {}
    desc = config.get("data_description") or {}
    try:
        genotype = load_genotype(search / "genotype.json")
        cfg = protocol.train_config(search / "genotype.json", protocol.out / "final", 0, selection=False)
        size, channels = int(desc.get("image_size", 32)), int(desc.get("channels", 3))
        net = trained_network(cfg, genotype, int(desc.get("num_classes", 10)), channels, size)
        return count_params(net), count_macs(net, (channels, size, size))
    except (OSError, ValueError) as e:
        protocol.say(f"report: cannot size the cell of {search}: {e}")
        return None


def _search_rows(protocol: Runs, picks: dict[str, str | None]) -> list[dict[str, Any]]:
    """The selection table: every search, its genotype, skip_connect per level, selection error, and pick."""
    rows = []
    sel_epochs = protocol.cfg.selection_epochs()
    for job in protocol.searches():
        cfg = job.cfg
        history = _history(job.folder)
        last = history[-1] if history else None
        row = f"{cfg.alpha_mode}_gamma{cfg.gamma:g}"
        rows.append(
            {
                "search": job.name,
                "alpha_mode": cfg.alpha_mode,
                "gamma": cfg.gamma,
                "seed": cfg.seed,
                "status": _status(job.folder, cfg.epochs),
                "genotype": last["genotype"] if last else None,
                "skip_connect": plots.skip_counts_per_level(last, cfg.alpha_mode) if last else None,
                "selection_error": _error(protocol.out / "select" / job.name, sel_epochs),
                "picked": picks.get(row) == str(job.folder),
                "search_seconds": sum(r["seconds"] for r in history),
                "device": cfg.device,
            }
        )
    return rows


def _table_rows(protocol: Runs, searches: list[dict[str, Any]], picks: dict[str, str | None]) -> list[dict[str, Any]]:
    """Table 1: per α mode and γ, the final trainings' test errors and their mean ± std."""
    cfg, rows = protocol.cfg, []
    epochs = cfg.train_settings().get("epochs", 600)
    for mode in cfg.alpha_modes:
        for gamma in cfg.gammas:
            name = f"{mode}_gamma{gamma:g}"
            mine = [s for s in searches if s["alpha_mode"] == mode and s["gamma"] == gamma]
            if cfg.final == "best":
                sources = [name] if picks.get(name) else []
                cells = [Path(picks[name])] if picks.get(name) else []
            else:
                sources = [s["search"] for s in mine if s["status"] == "finished"]
                cells = [protocol.out / "search" / s for s in sources]
            errors = [
                (f"{src}/seed{k}", _error(protocol.out / "final" / src / f"seed{k}", epochs))
                for src in sources
                for k in cfg.final_seeds
            ]
            done = [e for _, e in errors if e is not None]
            sizes = [s for s in (_cell_size(c, protocol) for c in cells) if s is not None]
            rows.append(
                {
                    "row": name,
                    "alpha_mode": mode,
                    "gamma": gamma,
                    "test_errors": {run: e for run, e in errors if e is not None},
                    "mean": round(statistics.mean(done), 4) if done else None,
                    "std": round(statistics.stdev(done), 4) if len(done) > 1 else (0.0 if done else None),
                    "runs": len(done),
                    "params": round(statistics.mean(p for p, _ in sizes)) if sizes else None,
                    "macs": round(statistics.mean(m for _, m in sizes)) if sizes else None,
                    "search_hours": round(sum(s["search_seconds"] for s in mine) / 3600, 6),
                    "hours_of": "GPU" if any(str(s["device"]).startswith("cuda") for s in mine) else "CPU",
                    "paper": PAPER_ERRORS.get((mode, float(gamma))) if cfg.dataset == "cifar10" else None,
                    "selected": Path(picks[name]).name if cfg.final == "best" and picks.get(name) else None,
                    "why_missing": None if done else _why_missing(mine, cfg.final),
                }
            )
    return rows


def _why_missing(searches: list[dict[str, Any]], final: str) -> str:
    """Why a row has no final result yet."""
    failed = [s for s in searches if s["status"].startswith("failed")]
    if searches and len(failed) == len(searches):
        return f"all {len(searches)} searches failed ({'; '.join(s['search'] + ': ' + s['status'] for s in failed)})"
    if final == "best" and not any(s["selection_error"] is not None for s in searches):
        return "no selection training finished yet"
    return "no final training finished yet"


def _failures(protocol: Runs) -> list[dict[str, str]]:
    """The runs that failed (``failed.json``) and those whose record is damaged, by folder."""
    found: dict[Path, str] = {}
    for path in protocol.out.glob("*/**/failed.json"):
        found[path.parent] = (_json(path) or {}).get("error", "?")
    for path in protocol.out.glob("*/**/metrics.jsonl"):
        try:
            read_metrics(path)
        except ValueError as e:
            found.setdefault(path.parent, str(e))
    return [{"run": str(folder.relative_to(protocol.out)), "error": found[folder]} for folder in sorted(found)]


def _stale(figure: Path, sources: list[Path]) -> bool:
    """Whether ``figure`` is missing or older than one of the files it is drawn from (figures are redrawn only
    when their data changed: the report is rebuilt after every run)."""
    if not figure.is_file():
        return True
    drawn = figure.stat().st_mtime_ns
    return any(p.stat().st_mtime_ns > drawn for p in sources if p.is_file())


def command(cfg: ProtocolConfig) -> str:
    """The command line that runs (or continues) this protocol."""
    words = ["mdarts-rs", "protocol", "--data", str(cfg.data), "--dataset", cfg.dataset, "--out", str(cfg.out)]
    words += ["--preset", cfg.preset, "--gamma", ",".join(f"{g:g}" for g in cfg.gammas)]
    words += ["--alpha-mode", ",".join(cfg.alpha_modes), "--seeds", ",".join(map(str, cfg.seeds))]
    words += ["--final", cfg.final, "--final-seeds", ",".join(map(str, cfg.final_seeds)), "--select-on", cfg.select_on]
    if cfg.select_epochs is not None:
        words += ["--select-epochs", str(cfg.select_epochs)]
    if cfg.holdout != 0.1:
        words += ["--holdout", f"{cfg.holdout:g}"]
    for prefix, settings in (("search", cfg.search), ("train", cfg.train)):
        for key, value in sorted(settings.items()):
            flag = f"--{prefix}-{key.replace('_', '-')}"
            if isinstance(value, bool):
                words.append(flag if value else f"--{prefix}-no-{key.replace('_', '-')}")
            else:
                words += [flag, *(map(str, value) if isinstance(value, (list, tuple)) else [str(value)])]
    return " ".join(words) + " --resume"


def build(protocol: Runs) -> dict[str, Any]:
    """The report's data, from the protocol's folders (and figures written beside it)."""
    cfg = protocol.cfg
    picks = selected(protocol) if cfg.final == "best" else {}
    searches = _search_rows(protocol, picks)
    figures: dict[str, Any] = {"skip_connect": None, "cells": {}}
    finished = [protocol.out / "search" / s["search"] for s in searches if s["status"] == "finished"]
    figure_dir = protocol.out / "figures"
    figure_dir.mkdir(exist_ok=True)
    if finished:
        figures["skip_connect"] = "figures/skip_connect.png"
        if _stale(protocol.out / figures["skip_connect"], [f / "metrics.jsonl" for f in finished]):
            plots.plot_compare_runs(finished, protocol.out / figures["skip_connect"])
    for row, pick in picks.items():
        if pick is not None:
            figures["cells"][row] = f"figures/cell_{row}.png"
            if _stale(protocol.out / figures["cells"][row], [Path(pick) / "genotype.json"]):
                plots.plot_genotype(load_genotype(Path(pick) / "genotype.json"), protocol.out / figures["cells"][row])
    return {
        "settings": cfg.to_json(),
        "recipes": {
            "search": cfg.search_settings(),
            "train": cfg.train_settings(),
            "preset": PROTOCOL_PRESETS[cfg.preset],
        },
        "selection": None
        if cfg.final == "all"
        else {"on": cfg.select_on, "holdout": cfg.holdout, "epochs": cfg.selection_epochs()},
        "table1": _table_rows(protocol, searches, picks),
        "searches": searches,
        "failures": _failures(protocol),
        "figures": figures,
        "command": command(cfg),
    }


def _table1_md(data: dict[str, Any]) -> list[str]:
    unit = next((r["hours_of"] for r in data["table1"]), "CPU")
    lines = [
        "## Table 1: test error of the final trainings",
        "",
        f"| α mode | γ | test error (%) of each run | mean ± std (%) | runs | params | MACs | search ({unit}-hours) "
        "| paper (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    missing = []
    for r in data["table1"]:
        if r["mean"] is None:
            missing.append(f"- {r['alpha_mode']}, γ = {r['gamma']:g}: {r['why_missing']}")
            continue
        each = ", ".join(f"{e:.2f}" for e in r["test_errors"].values())
        size = lambda v: "?" if v is None else f"{v / 1e6:.2f} M"  # noqa: E731
        paper = "" if r["paper"] is None else f"{r['paper']:.2f}"
        lines.append(
            f"| {r['alpha_mode']} | {r['gamma']:g} | {each} | {r['mean']:.2f} ± {r['std']:.2f} | {r['runs']} | "
            f"{size(r['params'])} | {size(r['macs'])} | {r['search_hours']:.3g} | {paper} |"
        )
    if missing:
        lines += ["", "Rows without a result:", *missing]
    return lines


def _selection_md(data: dict[str, Any]) -> list[str]:
    sel = data["selection"]
    if sel is None:
        where = "no selection: every search's cell is trained and tested (the paper's table 1, `--final all`)"
    elif sel["on"] == "test":
        where = (
            f"**selection used the test set**: each search's cell trained {sel['epochs']} epochs and scored on the "
            "test set, as the paper and DARTS' own code do; the final errors are therefore not independent of it"
        )
    else:
        where = (
            f"each search's cell trained {sel['epochs']} epochs on the training images less a validation split of "
            f"{sel['holdout']:g} of them, and scored on that split; no stage before the final one reads the test set"
        )
    lines = ["## Searches and the selection", "", f"Selection: {where}.", ""]
    lines += ["| search | status | skip_connect low/mid/high | selection error (%) | picked |", "|---|---|---|---|---|"]
    for s in data["searches"]:
        skips = "/".join(str(s["skip_connect"][lv]) for lv in plots.LEVELS) if s["skip_connect"] else ""
        err = "" if s["selection_error"] is None else f"{s['selection_error']:.2f}"
        lines.append(f"| {s['search']} | {s['status']} | {skips} | {err} | {'yes' if s['picked'] else ''} |")
    return lines


def markdown(data: dict[str, Any]) -> str:
    """``report.md``: the report for a reader."""
    cfg = data["settings"]
    lines = [
        f"# Protocol report: {cfg['out']}",
        "",
        f"Searches: γ ∈ {{{', '.join(f'{g:g}' for g in cfg['gammas'])}}} × α mode {', '.join(cfg['alpha_modes'])} × "
        f"seeds {', '.join(map(str, cfg['seeds']))}, preset `{cfg['preset']}`; final trainings: `--final "
        f"{cfg['final']}` with seeds {', '.join(map(str, cfg['final_seeds']))}, tested on the test set. "
        "What is not finished yet is left out; this report is rewritten after every run.",
        "",
        *_table1_md(data),
        "",
        *_selection_md(data),
        "",
        "## Figures",
        "",
    ]
    figures = data["figures"]
    if figures["skip_connect"]:
        lines.append(f"skip_connect per level over the search epochs: ![skip_connect]({figures['skip_connect']})")
    lines += [f"- selected cell of {row}: ![{row}]({path})" for row, path in figures["cells"].items()]
    if data["failures"]:
        lines += ["", "## Failures", "", *(f"- {f['run']}: {f['error']}" for f in data["failures"])]
    lines += ["", "## Run it again", "", "```sh", data["command"], "```", ""]
    return "\n".join(lines)


def write(out: Path, data: dict[str, Any]) -> None:
    """``report.json`` and ``report.md`` into the protocol folder ``out``."""
    atomic_write_text(out / "report.json", json.dumps(data, indent=2) + "\n")
    atomic_write_text(out / "report.md", markdown(data))
