"""TensorBoard event files of a run (``--tensorboard``): in the run folder's ``tb/``, one run per folder, so that
``tensorboard --logdir runs/`` compares runs. A resumed run appends to the same files, opened with TensorBoard's
purge step at its checkpoint's step, so that what a stopped run logged after its checkpoint is dropped and no
step appears twice."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mdarts_rs import plots
from mdarts_rs._core import Genotype, MultiLevelGenotype


class Board:
    """The event files of one run, in ``folder/tb`` (written by one process: rank 0 under torchrun)."""

    def __init__(self, folder: Path, purge_step: int = 1):
        """Event files in ``folder/tb``; a resumed run's ``purge_step`` is the first step it logs."""
        # torch's writer needs the optional tensorboard package (the config refuses --tensorboard without it):
        # imported only when it is used
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder / "tb"), purge_step=purge_step if purge_step > 1 else None)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def search_epoch(
        self,
        step: int,
        record: Mapping[str, Any],
        genotype: Genotype | MultiLevelGenotype,
        alpha: Mapping[str, Any],
        steps: int,
    ) -> None:
        """An epoch of a search: accuracies, mean edge entropy per table, every op's count per level (skip_connect
        among them: the paper's figure, live), the supernet/derived gap, the epoch's time and steps per second;
        softmax(α) as heat-maps and the derived cells as images; the genotype as text."""
        values = {
            "epoch/train_acc": record["train_acc"],
            "epoch/val_acc": record["val_acc"],
            "epoch/train_loss": record["train_loss"],
            "epoch/val_loss": record["val_loss"],
            "epoch/entropy_loss": record["entropy_loss"],
            "epoch/seconds": record["seconds"],
            "epoch/steps_per_second": steps / max(record["seconds"], 1e-9),
            **{f"gap/{k}": v for k, v in record["gap"].items() if k != "images"},
            **{f"entropy/{t}": h for t, h in record["entropy"].items()},
            **{f"ops/{t}/{op}": n for t, counts in record["op_counts"].items() for op, n in counts.items()},
        }
        self.scalars(step, values)
        self.writer.add_figure("alpha", plots.alpha_heatmaps(alpha), step)
        self.writer.add_figure("cells", plots.genotype_figure(genotype), step)
        self.writer.add_text("genotype", f"`{genotype!r}`", step)
        self.writer.flush()

    def train_epoch(self, step: int, record: Mapping[str, Any], drop_path: float) -> None:
        """An epoch of a training: losses, accuracy and errors, learning rate, drop-path probability, epoch time."""
        keys = ("train_loss", "train_acc", "test_loss", "top1_err", "top5_err", "lr", "seconds")
        self.scalars(step, {f"epoch/{k}": record[k] for k in keys} | {"epoch/drop_path": drop_path})
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
