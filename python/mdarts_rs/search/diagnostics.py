"""What a search records after each epoch: the derived genotype and the diagnostics the paper's argument rests on
(op counts per level, skip_connect above all; mean edge entropy per table; the gap between the supernet and the
derived network)."""

from __future__ import annotations

from typing import Any

import torch

from mdarts_rs._core import Genotype, MultiLevelGenotype
from mdarts_rs.search.step import batch_statistics
from mdarts_rs.search.supernet import SuperNet, Weights, kept_edges, one_hot_weights

#: An epoch's running totals, in the order the checkpoints' ``acc`` and the device totals use.
TOTALS = ("train_loss", "val_loss", "train_correct", "val_correct", "n_train", "n_val", "entropy_loss")


def step_totals(stats: dict[str, float], n_t: int, n_v: int) -> list[float]:
    """A step's contribution to each of ``TOTALS``, from its statistics (``STEP_STATS``)."""
    return [
        stats["train_loss"] * n_t,
        stats["val_loss"] * n_v,
        stats["train_correct"],
        stats["val_correct"],
        n_t,
        n_v,
        stats["entropy_loss"],
    ]


def device_totals(stats: torch.Tensor, n_t: int, n_v: int) -> torch.Tensor:
    """``step_totals`` of a step's statistics vector, computed on its device (no host synchronisation)."""
    a_loss, val_loss, train_loss, entropy, val_correct, train_correct = stats[:6].unbind()
    # new_full launches a fill kernel; a tensor made from a Python number would be copied from the host
    return torch.stack(
        [
            train_loss * n_t,
            val_loss * n_v,
            train_correct,
            val_correct,
            stats.new_full((), n_t),
            stats.new_full((), n_v),
            entropy,
        ]
    )


@torch.no_grad()
def gap_accuracy(
    model: SuperNet,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: Weights | None,
    edge_weights: Weights | None,
    sparse: bool,
    chunk: int = 256,
) -> float:
    """Top-1 accuracy on a fixed set, BN on batch statistics of each chunk."""
    correct = 0
    with batch_statistics(model):
        for i in range(0, len(y), chunk):
            logits = model(x[i : i + chunk], weights, sparse=sparse, edge_weights=edge_weights)
            correct += int((logits.argmax(1) == y[i : i + chunk]).sum())
    return correct / max(1, len(y))


def epoch_record(
    model: SuperNet,
    acc: dict[str, float],
    steps: int,
    gap: tuple[torch.Tensor, torch.Tensor],
    max_skip: int | None,
) -> tuple[dict[str, Any], Genotype | MultiLevelGenotype]:
    """An epoch's record (``metrics.jsonl``'s line, without its number, learning rate and time) from its totals
    ``acc``, and the genotype derived after it. The gap is the top-1 accuracy on the fixed images ``gap`` of the
    supernet and of the derived network (the supernet with one-hot weights), both on batch statistics."""
    device = gap[0].device
    with torch.no_grad():
        p, h = model.softmax_entropy()  # once for the genotype, the entropies and the supernet's accuracy
        e = model.edge_weights()
    genotype = model.genotype(p, e, max_skip=max_skip)
    sup = gap_accuracy(model, *gap, p, e, sparse=False)
    kept = None if e is None else kept_edges(genotype, device)
    der = gap_accuracy(model, *gap, one_hot_weights(genotype, device), kept, sparse=True)
    op_counts = {t: c.op_counts() for t, c in genotype.cells.items()}
    rec = {
        "train_loss": acc["train_loss"] / max(1, acc["n_train"]),
        "train_acc": acc["train_correct"] / max(1, acc["n_train"]),
        "val_loss": acc["val_loss"] / max(1, acc["n_val"]),
        "val_acc": acc["val_correct"] / max(1, acc["n_val"]),
        "entropy_loss": acc["entropy_loss"] / max(1, steps),
        "entropy": {t: float(v.mean()) for t, v in h.items()},
        "op_counts": op_counts,
        "skip_connect": {t: c["skip_connect"] for t, c in op_counts.items()},
        "gap": {"supernet_acc": sup, "derived_acc": der, "gap": sup - der, "images": len(gap[1])},
        "genotype": genotype.to_json(),
    }
    return rec, genotype
