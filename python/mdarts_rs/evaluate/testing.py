"""Testing a trained network: top-1 and top-5 error on the test set of the data it was trained on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mdarts_rs.data import CifarLoader, Dataset, has_test_set, load_dataset, resolve_data
from mdarts_rs.device import resolve_device
from mdarts_rs.distributed import all_reduce_sum
from mdarts_rs.evaluate.trained import load_trained
from mdarts_rs.run import data_fingerprint, read_checkpoint


def accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    return (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum()


@torch.no_grad()
def evaluate_network(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    bf16: bool = False,
    world_size: int | None = None,
) -> dict[str, float]:
    """Top-1/top-5 error and loss over all batches, summed over the ``world_size`` ranks of one training (by
    default the process group's)."""
    model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]  # loss·n, top-1 correct, top-5 correct, n
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, _ = model(x)
        logits = logits.float()
        sums[0] += float(F.cross_entropy(logits, y, reduction="sum"))
        sums[1] += float(accuracy(logits, y, 1))
        sums[2] += float(accuracy(logits, y, min(5, logits.shape[1])))
        sums[3] += len(y)
    loss, c1, c5, n = all_reduce_sum(sums, device, world_size)
    n = max(n, 1.0)
    return {"test_loss": loss / n, "top1_err": 1 - c1 / n, "top5_err": 1 - c5 / n, "test_images": int(n)}


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str], data: Path, device: str = "auto", bf16: bool = False
) -> dict[str, float]:
    """Top-1/top-5 test error of a trained network's checkpoint on the test set of its dataset in ``data``
    (CIFAR-10/100's test files, an arrays file's test arrays or a folder's val/; for data without a test set,
    the images its training held out, as saved in the checkpoint). The images must have the classes, size
    and channels the network was trained on."""
    dev = resolve_device(device)
    trained = load_trained(checkpoint, dev)
    if trained.dataset == "imagenet":
        raise ValueError(f"{checkpoint}: testing supports the CIFAR-scale networks; this one is {trained.dataset}")
    state = read_checkpoint(checkpoint, "train")
    desc = state.get("dataset") or {}
    opts = dict(label=desc.get("label", "fine"), image_size=desc.get("image_size"))
    held_out = state.get("test_indices") is not None  # the training held out its test images: those are tested
    if (
        not held_out
        and trained.dataset in ("cifar10", "cifar100", "arrays")
        and not has_test_set(trained.dataset, data)
    ):
        raise ValueError(
            f"{data}: holds no test set (test_images and test_labels) and the network was trained on all of it"
        )
    if held_out:
        full = load_dataset(trained.dataset, data, "train", **opts)  # type: ignore[arg-type]
        idx = np.asarray(state["test_indices"], dtype=np.int64)
        if len(idx) and idx.max() >= len(full):
            raise ValueError(f"{data}: has {len(full)} images, fewer than the held-out test images of {checkpoint}")
        test = full.subset(idx)
        _check_trained_on(full, idx, test, state, data, checkpoint)
    else:
        test = load_dataset(trained.dataset, data, "test", **opts)  # type: ignore[arg-type]
    if test.class_names != trained.class_names or (test.channels, test.image_size) != (
        trained.in_channels,
        trained.image_size,
    ):
        raise ValueError(
            f"{data}: its test images ({len(test.class_names)} classes, {test.channels} channels, "
            f"{test.image_size} pixels) are not those {checkpoint} was trained on ({len(trained.class_names)} "
            f"classes, {trained.in_channels} channels, {trained.image_size} pixels)"
        )
    batches = CifarLoader(
        test.images,
        test.labels,
        batch_size=256,
        shuffle=False,
        drop_last=False,
        augment=False,
        device=dev,
        mean=trained.mean,
        std=trained.std,
        num_classes=len(trained.class_names),
    )
    return evaluate_network(trained.model, iter(batches), dev, bf16)


def _check_trained_on(full: Dataset, idx: np.ndarray, held_out: Dataset, state: dict, data: Path, checkpoint) -> None:
    """ValueError unless ``full``'s images are those the checkpoint's training read: the images it trained on (its
    ``data`` fingerprint) and those it held out at ``idx`` (``held_out``; ``dataset.holdout.data``, where recorded).
    Otherwise the saved indices would pick other images, some of them trained on."""
    kept = full.subset(np.setdiff1d(np.arange(len(full)), idx))
    pairs = [("trained on", state.get("data"), data_fingerprint(kept.images, kept.labels))]
    recorded = ((state.get("dataset") or {}).get("holdout") or {}).get("data")
    pairs.append(("held out", recorded, data_fingerprint(held_out.images, held_out.labels)))
    for what, then, now in pairs:
        if then is not None and then != now:
            raise ValueError(
                f"{data}: not the images {checkpoint} was trained on (the images it {what} were {then}, here "
                f"{now}); its {len(idx)} held-out test images are found by their place in the data, so test needs "
                "the data it was trained on, in the same order"
            )


def test_checkpoint(
    checkpoint: str | os.PathLike[str], data: Path | None = None, dataset: str | None = None, device: str = "auto"
) -> dict[str, float]:
    """``mdarts-rs test``: ``evaluate_checkpoint`` on the data the network was trained on, by default at the path
    its checkpoint recorded; ``dataset``, where given, must be the checkpoint's."""
    resolve_device(device)  # a bad device name first, before any file is read
    state = read_checkpoint(checkpoint, "train")
    trained_on = state["config"].get("dataset", "cifar10")
    if dataset is not None and dataset != trained_on:
        raise ValueError(f"{checkpoint}: the network was trained on {trained_on}, not {dataset}")
    recorded = (state.get("dataset") or {}).get("path")
    if data is None and recorded is not None:
        data = Path(recorded)
    return evaluate_checkpoint(checkpoint, resolve_data(data, False, trained_on), device)
