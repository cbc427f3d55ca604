"""Plots of a search (PNG through matplotlib's Agg backend; no system binary needed): skip_connect count per
level over epochs (the paper's figure 3), α heat-maps per table, and drawings of the derived cells."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mdarts_rs._core import PRIMITIVES, CellGenotype, Genotype, MultiLevelGenotype  # noqa: E402
from mdarts_rs.run import SEARCH_PLOTS, RunFolder  # noqa: E402

LEVELS = ("low", "mid", "high")


def skip_counts_per_level(rec: Mapping[str, Any], alpha_mode: str) -> dict[str, int]:
    """skip_connect count of the normal cell at each level; a shared normal cell serves every level."""
    skips = rec["skip_connect"]
    if alpha_mode == "shared":
        return {lv: skips["normal"] for lv in LEVELS}
    return {lv: skips[f"normal_{lv}"] for lv in LEVELS}


def plot_skip_connect(
    runs: Mapping[str, tuple[str, Sequence[Mapping[str, Any]]]], path: str | os.PathLike[str]
) -> None:
    """skip_connect count in the normal cell of each level over epochs, one line per (run, level).

    ``runs`` maps a label to ``(alpha_mode, history)``."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
    for label, (mode, history) in runs.items():
        epochs = [r["epoch"] + 1 for r in history]
        per_level = [skip_counts_per_level(r, mode) for r in history]
        for ax, lv in zip(axes, LEVELS):
            ax.plot(epochs, [c[lv] for c in per_level], marker="o", label=label)
    for ax, lv in zip(axes, LEVELS):
        ax.set_title(f"{lv} level (normal cell)")
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.2, 8.2)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("skip_connect edges")
    axes[-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _edge_labels() -> list[str]:
    labels = []
    for node in range(4):
        for j in range(node + 2):
            labels.append(f"{j}→{node + 2}")
    return labels


def alpha_heatmaps(tables: Mapping[str, Any]) -> Any:
    """A figure of softmax(α) of every table as a (14 edges × 8 ops) heat-map."""
    n = len(tables)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1, 5), squeeze=False)
    for ax, (name, p) in zip(axes[0], tables.items()):
        im = ax.imshow(p, cmap="viridis", aspect="auto")  # own colour range: early α differ by little
        ax.set_title(name)
        ax.set_xticks(range(len(PRIMITIVES)), PRIMITIVES, rotation=90, fontsize=7)
        ax.set_yticks(range(len(p)), _edge_labels(), fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_alpha_heatmaps(tables: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """``alpha_heatmaps`` written to ``path``."""
    _save(alpha_heatmaps(tables), path)


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    fig.savefig(path, dpi=120)
    plt.close(fig)


_OP_COLOURS = {
    "max_pool_3x3": "#4c72b0",
    "avg_pool_3x3": "#55a868",
    "skip_connect": "#c44e52",
    "sep_conv_3x3": "#8172b2",
    "sep_conv_5x5": "#ccb974",
    "dil_conv_3x3": "#64b5cd",
    "dil_conv_5x5": "#8c8c8c",
}


def draw_cell(cell: CellGenotype, ax: Any, title: str = "") -> None:
    """Draw a derived cell: inputs c_{k-2}, c_{k-1} on the left, nodes 0-3, the concat output on the right."""
    pos = {0: (0.0, 2.0), 1: (0.0, 0.0)}
    for node in range(4):
        pos[node + 2] = (1.0 + node, 3.0 if node % 2 == 0 else -1.0)
    out = (5.6, 1.0)
    names = {0: "c_{k-2}", 1: "c_{k-1}"} | {i + 2: str(i) for i in range(4)}
    for i, (op, j) in enumerate(cell.edges):
        dst = i // 2 + 2
        (x0, y0), (x1, y1) = pos[j], pos[dst]
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops=dict(
                arrowstyle="->", color=_OP_COLOURS[op], lw=1.6, shrinkA=12, shrinkB=12, connectionstyle="arc3,rad=0.08"
            ),
        )
        ax.text(
            (x0 + x1) / 2,
            (y0 + y1) / 2,
            op,
            fontsize=8,
            color=_OP_COLOURS[op],
            ha="center",
            va="center",
            bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8),
        )
    for c in cell.concat:
        (x0, y0) = pos[c]
        ax.annotate(
            "", xy=out, xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="#bbbbbb", lw=1, shrinkA=12, shrinkB=14)
        )
    for k, (x, y) in pos.items():
        ax.text(
            x,
            y,
            f"${names[k]}$" if k < 2 else names[k],
            ha="center",
            va="center",
            fontsize=9,
            bbox=dict(boxstyle="circle" if k >= 2 else "round", fc="#fff3c4" if k >= 2 else "#d5e8d4", ec="black"),
        )
    ax.text(
        *out, "$c_{k}$", ha="center", va="center", fontsize=9, bbox=dict(boxstyle="round", fc="#dae8fc", ec="black")
    )
    ax.set_xlim(-0.6, 6.2)
    ax.set_ylim(-1.8, 3.8)
    ax.set_title(title)
    ax.axis("off")


def genotype_figure(genotype: Any) -> Any:
    """A figure of every cell of a genotype, one panel each."""
    cells = genotype.cells
    cols = min(3, len(cells))
    rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.6 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (name, cell) in zip(flat, cells.items()):
        draw_cell(cell, ax, name)
    for ax in flat[len(cells) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_genotype(genotype: Any, path: str | os.PathLike[str]) -> None:
    """``genotype_figure`` written to ``path``."""
    _save(genotype_figure(genotype), path)


def plot_search_run(
    folder: Path, history: Sequence[Mapping[str, Any]], model: Any, genotype: Genotype | MultiLevelGenotype
) -> list[Path]:
    """All plots of a finished search into ``folder/plots``: skip_connect over its epochs (``history``), the
    supernet's (``model``'s) α as heat-maps, and the derived ``genotype``'s cells."""
    out = folder / "plots"
    out.mkdir(exist_ok=True)
    mode = model.alpha_mode
    paths = [out / name for name in SEARCH_PLOTS]  # skip_connect, alpha, genotype: the files --overwrite replaces
    plot_skip_connect({mode: (mode, list(history))}, paths[0])
    with torch.no_grad():
        p, _ = model.softmax_entropy()
    plot_alpha_heatmaps({k: v.cpu().numpy() for k, v in p.items()}, paths[1])
    plot_genotype(genotype, paths[2])
    return paths


def plot_compare_runs(run_dirs: Sequence[str | os.PathLike[str]], path: str | os.PathLike[str]) -> None:
    """The paper's figure 3 for several finished runs (e.g. shared against multilevel, same seed)."""
    runs = {}
    for d in run_dirs:
        r = RunFolder(d, create=False)
        cfg = r.read_json("config.json")
        history = r.read_metrics()
        if not history:
            raise ValueError(f"{r.metrics}: no finished epoch to plot")
        runs[f"{cfg['alpha_mode']} γ={cfg['gamma']:g} ({Path(d).name})"] = (cfg["alpha_mode"], history)
    plot_skip_connect(runs, path)


def plot_learning_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Training loss and test top-1 error over epochs of a training run."""
    epochs = [r["epoch"] + 1 for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [r["train_loss"] for r in history], label="train")
    a.plot(epochs, [r["test_loss"] for r in history], label="test")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(epochs, [100 * r["top1_err"] for r in history], label="top-1")
    b.plot(epochs, [100 * r["top5_err"] for r in history], label="top-5")
    b.set_xlabel("epoch")
    b.set_ylabel("test error (%)")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
