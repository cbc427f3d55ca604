"""Training and testing the evaluation networks from scratch, as DARTS does on CIFAR-10 (Liu et al. 2019,
section A.2: 600 epochs, batch 96, SGD 0.025 cosine, momentum 0.9, weight decay 3e-4, clip 5, auxiliary
weight 0.4, cutout 16, drop-path 0.2 raised linearly) and as P-DARTS/PC-DARTS do on ImageNet (250 epochs,
batch 1024, lr 0.5 with 5 warm-up epochs and linear decay, label smoothing 0.1).

Under ``torchrun`` the same code trains with DistributedDataParallel: each rank reads its own shard of
the training set with ``batch_size / world_size`` images per step, and metrics are reduced over ranks.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mdarts_rs.config import TrainConfig, resume_conflicts
from mdarts_rs.datasets import Dataset, as_dataset, channel_stats, description_conflicts, has_test_set, load_dataset
from mdarts_rs.device import resolve_device
from mdarts_rs.distributed import all_reduce_sum, init_distributed, world
from mdarts_rs.evaluate.network import NetworkCIFAR, NetworkImageNet
from mdarts_rs.evaluate.trained import trained_network
from mdarts_rs.genotype import load_genotype
from mdarts_rs.run import RunFolder
from mdarts_rs.search import data_fingerprint, first_names, non_finite_state

# ---- data ----------------------------------------------------------------------------------------------


def shard_indices(n: int, seed: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's fixed share of ``n`` training images: a seeded permutation dealt out round-robin."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[rank::world_size])


def scaled_cutout(cutout: int, image_size: int) -> int:
    """``--cutout`` is given for 32-pixel images (DARTS' 16); other sides scale it (32 at 64), at most the side."""
    return min(image_size, round(cutout * image_size / 32))


class CifarData:
    """The training shard (augmented, cutout) and test set (unaugmented) of a dataset for this rank,
    normalised with the training images' mean and std."""

    def __init__(self, cfg: TrainConfig, train: Dataset, test: Dataset, device: torch.device):
        from mdarts_rs.data import CifarLoader

        rank, ws = world()
        if cfg.batch_size % ws:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {ws} processes")
        common: dict[str, Any] = dict(
            workers=cfg.workers,
            device=device,
            pin_memory=device.type == "cuda",
            mean=train.mean,
            std=train.std,
            num_classes=train.num_classes,
        )
        self.train = CifarLoader(
            train.images,
            train.labels,
            shard_indices(len(train.labels), cfg.seed, rank, ws),
            batch_size=cfg.batch_size // ws,
            cutout=scaled_cutout(cfg.cutout, train.image_size),
            seed=cfg.seed + rank,
            **common,
        )
        test_idx = np.arange(rank, len(test.labels), ws)  # each rank tests its share; metrics are summed
        self.test = CifarLoader(
            test.images,
            test.labels,
            test_idx,
            batch_size=256,
            shuffle=False,
            drop_last=False,
            augment=False,
            **common,
        )


# ---- the training loop ----------------------------------------------------------------------------------


def lr_at(cfg: TrainConfig, epoch: float) -> float:
    """Learning rate at a (fractional) epoch: linear warm-up, then cosine to 0 or linear decay to 0."""
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    t = (epoch - cfg.warmup_epochs) / max(1, cfg.epochs - cfg.warmup_epochs)
    if cfg.lr_schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))
    return cfg.lr * (1 - t)


def accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    return (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum()


@torch.no_grad()
def evaluate_network(
    model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], device: torch.device, bf16: bool = False
) -> dict[str, float]:
    """Top-1/top-5 error and loss over all batches (summed over ranks)."""
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
    loss, c1, c5, n = all_reduce_sum(sums, device)
    n = max(n, 1.0)
    return {"test_loss": loss / n, "top1_err": 1 - c1 / n, "top5_err": 1 - c5 / n, "test_images": int(n)}


class Trainer:
    """One training run; ``run()`` trains to the end, checkpointing every epoch."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: NetworkCIFAR | NetworkImageNet,
        train_batches,
        test_batches,
        device: torch.device,
        run: RunFolder | None,
        genotype_json: str = "",
        data_fingerprint: str | None = None,
        class_names: list[str] | None = None,
        data_description: dict[str, Any] | None = None,
        test_indices: list[int] | None = None,
    ):
        self.cfg, self.device, self.run, self.genotype_json = cfg, device, run, genotype_json
        #: the training data's description (``Dataset.describe()``) and, for data without a test set, the
        #: indices of the images held out as the test set (``datasets.holdout_split``)
        self.data_description, self.test_indices = data_description, test_indices
        #: what the training reads (CIFAR-10: the images' count and hash), checked on resume
        self.data_fingerprint = data_fingerprint
        self.class_names = class_names
        self.train_batches, self.test_batches = train_batches, test_batches
        self.model = model.to(device)
        self.net = self.model
        if world()[1] > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.opt = torch.optim.SGD(
            self.model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.epoch = 0
        self.history: list[dict[str, Any]] = []

    def state(self) -> dict[str, Any]:
        return {
            "format": 1,
            "config": self.cfg.to_json(),
            "genotype": self.genotype_json,
            "epoch": self.epoch,
            "history": self.history,
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "rng": torch.get_rng_state(),
            "data": self.data_fingerprint,
            "class_names": self.class_names,
            "dataset": self.data_description,
            "test_indices": self.test_indices,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        saved = TrainConfig.from_json(state["config"]).to_json()
        resume_conflicts(
            saved, self.cfg.to_json(), {"resume", "overwrite", "quiet", "device", "workers", "out", "data"}
        )
        if self.data_description is not None:
            changed = description_conflicts(state.get("dataset"), self.data_description)
            if changed:
                raise ValueError(f"cannot resume with a different dataset ({', '.join(changed)})")
        if state.get("data") != self.data_fingerprint:
            raise ValueError(
                f"cannot resume with other data: the run trained on {state.get('data')}, this data is "
                f"{self.data_fingerprint}"
            )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        torch.set_rng_state(state["rng"])

    def _kept(self) -> str:
        return self.run.checkpoint_note() if self.run is not None else "no checkpoint was written by this process"

    def train_epoch(self) -> dict[str, float]:
        cfg, model, net = self.cfg, self.model, self.net
        model.train()
        # Drop-path probability raised linearly over training (DARTS).
        model.drop_path_prob = cfg.drop_path * self.epoch / cfg.epochs
        steps = len(self.train_batches)
        if cfg.steps_per_epoch is not None:
            steps = min(steps, cfg.steps_per_epoch)
        sums = [0.0, 0.0, 0.0]  # loss·n, correct, n
        rank, _ = world()
        bar = tqdm(
            total=steps,
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            disable=cfg.quiet or rank != 0,
            leave=False,
            unit="step",
        )
        self.train_batches.set_epoch(self.epoch)
        for step, (x, y) in enumerate(self.train_batches):
            if step >= steps:
                break
            for g in self.opt.param_groups:
                g["lr"] = lr_at(cfg, self.epoch + step / steps)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                logits, aux = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                if aux is not None:
                    loss = loss + cfg.auxiliary_weight * F.cross_entropy(
                        aux.float(), y, label_smoothing=cfg.label_smoothing
                    )
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.opt.step()
            stats = torch.stack([loss.detach() * len(y), accuracy(logits.detach(), y, 1).to(loss.dtype)]).tolist()
            if not math.isfinite(stats[0]):
                raise FloatingPointError(
                    f"epoch {self.epoch} step {step}: the training loss is {stats[0]}; {self._kept()}"
                )
            sums[0] += stats[0]
            sums[1] += stats[1]
            sums[2] += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{stats[0] / len(y):.3f}", refresh=False)
        bar.close()
        loss_sum, correct, n = all_reduce_sum(sums, self.device)
        return {
            "train_loss": loss_sum / max(n, 1),
            "train_acc": correct / max(n, 1),
            "lr": self.opt.param_groups[0]["lr"],
        }

    def run_epochs(self) -> list[dict[str, Any]]:
        rank, _ = world()
        while self.epoch < self.cfg.epochs:
            t0 = time.time()
            rec: dict[str, Any] = {"epoch": self.epoch, **self.train_epoch()}
            rec.update(evaluate_network(self.net, iter(self.test_batches), self.device, self.cfg.bf16))
            rec["seconds"] = time.time() - t0
            bad = non_finite_state(self.model, {"optimizer": self.opt})
            if bad or not all(math.isfinite(rec[k]) for k in ("train_loss", "test_loss")):
                kept = self._kept()
                raise FloatingPointError(
                    f"epoch {self.epoch}: the training diverged (train loss {rec['train_loss']}, test loss "
                    f"{rec['test_loss']}{'; non-finite ' + first_names(bad) if bad else ''}); {kept}; lower the learning rate "
                    "or the weight decay"
                )
            self.history.append(rec)
            self.epoch += 1
            if rank == 0:
                if self.run is not None:
                    self.run.write_metrics(self.history)
                    self.run.save_checkpoint(self.state())
                if not self.cfg.quiet:
                    tqdm.write(
                        f"epoch {rec['epoch'] + 1}/{self.cfg.epochs}: train loss {rec['train_loss']:.3f} acc {rec['train_acc']:.3f}, "
                        f"test top-1 err {rec['top1_err']:.4f} top-5 err {rec['top5_err']:.4f} ({rec['seconds']:.0f} s)"
                    )
        return self.history


def _imagenet_batches(cfg: TrainConfig, device: torch.device):
    """ImageFolder train/val loaders with the ImageNet recipe's transforms (needs torchvision)."""
    try:
        from torchvision import datasets, transforms
    except ImportError as e:
        raise RuntimeError("ImageNet training needs torchvision (pip install 'mdarts-rs[bench]')") from e
    assert cfg.data is not None, "ImageNet training needs --data"
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.4, 0.4, 0.4, 0.2),
            transforms.ToTensor(),
            normalize,
        ]
    )
    test_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize])
    for sub in ("train", "val"):
        if not (cfg.data / sub).is_dir():
            raise FileNotFoundError(f"{cfg.data / sub}: ImageNet needs train/ and val/ ImageFolder directories")
    train_set = datasets.ImageFolder(str(cfg.data / "train"), train_tf)
    test_set = datasets.ImageFolder(str(cfg.data / "val"), test_tf)
    rank, ws = world()
    sampler = torch.utils.data.DistributedSampler(train_set, ws, rank, seed=cfg.seed) if ws > 1 else None
    workers = cfg.workers if cfg.workers is not None else min(8, os.cpu_count() or 1)
    train = torch.utils.data.DataLoader(
        train_set,
        batch_size=cfg.batch_size // ws,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    test = torch.utils.data.DataLoader(
        test_set,
        batch_size=256,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        sampler=torch.utils.data.DistributedSampler(test_set, ws, rank, shuffle=False) if ws > 1 else None,
    )

    class _Batches:
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def set_epoch(self, epoch: int) -> None:
            if sampler is not None:
                sampler.set_epoch(epoch)

        def __iter__(self):
            for x, y in self.loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return _Batches(train), _Batches(test), list(train_set.classes)


def train_test_data(cfg: TrainConfig, quiet: bool = True) -> tuple[Dataset, Dataset, list[int] | None]:
    """The training and test sets of ``cfg``'s dataset, the test set normalised as the training set. Data
    without its own test set (an image folder without train/ and val/, an arrays file without test_images)
    holds out ``cfg.holdout`` of its images, drawn from ``cfg.seed``; their indices come third (else None)."""
    opts = dict(label=cfg.label, image_size=cfg.image_size, skip_bad_images=cfg.skip_bad_images, workers=cfg.workers)
    train = load_dataset(cfg.dataset, cfg.data, "train", quiet=quiet, **opts)  # type: ignore[arg-type]
    if has_test_set(cfg.dataset, cfg.data):  # type: ignore[arg-type]
        test = load_dataset(cfg.dataset, cfg.data, "test", quiet=quiet, **opts)  # type: ignore[arg-type]
        if (test.channels, test.image_size) != (train.channels, train.image_size):
            raise ValueError(
                f"{cfg.data}: the test images are {test.channels}×{test.image_size}², the training images "
                f"{train.channels}×{train.image_size}²"
            )
        if test.class_names != train.class_names:
            raise ValueError(
                f"{cfg.data}: the test set's classes {test.class_names[:5]} differ from the training set's "
                f"{train.class_names[:5]}"
            )
        test.mean, test.std = train.mean, train.std
        return train, test, None
    from mdarts_rs.datasets import holdout_split

    tr, te = holdout_split(len(train), cfg.seed, cfg.holdout)
    test = train.subset(te)
    train = train.subset(tr)
    train.mean, train.std = channel_stats(train.images)
    test.mean, test.std = train.mean, train.std
    train.info["holdout"] = test.info["holdout"] = {"fraction": cfg.holdout, "seed": cfg.seed, "test_images": len(te)}
    return train, test, [int(i) for i in te]


def build_trainer(cfg: TrainConfig, data: tuple | None = None) -> Trainer:
    """A Trainer for ``cfg``; ``data`` = (train, test) Datasets, or ((train images, labels), (test images,
    labels)) for CIFAR-10, else read from ``cfg.data``."""
    device = init_distributed(resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    genotype = load_genotype(cfg.genotype)
    rank, _ = world()
    run = RunFolder(cfg.out) if rank == 0 else None
    test_indices = None
    if cfg.dataset != "imagenet":
        if data is None:
            assert cfg.data is not None, f"{cfg.dataset} training needs --data"
            train_set, test_set, test_indices = train_test_data(cfg, quiet=cfg.quiet or rank != 0)
        else:
            train_set, test_set = (d if isinstance(d, Dataset) else as_dataset(d[0], d[1], cfg.dataset) for d in data)
        class_names = list(train_set.class_names)
        fingerprint = data_fingerprint(train_set.images, train_set.labels)
        d = CifarData(cfg, train_set, test_set, device)
        train_batches, test_batches = d.train, d.test
        description: dict[str, Any] | None = train_set.describe()
        in_channels, image_size = train_set.channels, train_set.image_size
    else:
        train_batches, test_batches, class_names = _imagenet_batches(cfg, device)  # the folders in train/
        fingerprint = None  # an ImageFolder is not fingerprinted
        description, in_channels, image_size = None, 3, 224
    model = trained_network(cfg, genotype, len(class_names), in_channels, image_size)
    return Trainer(
        cfg,
        model,
        train_batches,
        test_batches,
        device,
        run,
        genotype.to_json(),
        fingerprint,
        class_names,
        description,
        test_indices,
    )


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str], data: Path, device: str = "auto", bf16: bool = False
) -> dict[str, float]:
    """Top-1/top-5 test error of a trained network's checkpoint on the test set of its dataset in ``data``
    (CIFAR-10/100's test files, an arrays file's test arrays or a folder's val/; for data without a test set,
    the images its training held out, as saved in the checkpoint). The images must have the classes, size
    and channels the network was trained on."""
    from mdarts_rs.data import CifarLoader
    from mdarts_rs.evaluate.trained import load_trained
    from mdarts_rs.run import read_checkpoint

    dev = resolve_device(device)
    trained = load_trained(checkpoint, dev)
    if trained.dataset == "imagenet":
        raise ValueError(f"{checkpoint}: testing supports the CIFAR-scale networks; this one is {trained.dataset}")
    state = read_checkpoint(checkpoint, "train")
    desc = state.get("dataset") or {}
    opts = dict(label=desc.get("label", "fine"), image_size=desc.get("image_size"))
    if trained.dataset in ("cifar10", "cifar100", "arrays") and not has_test_set(trained.dataset, data):
        raise ValueError(
            f"{data}: holds no test set (test_images and test_labels) and the network was trained on all of it"
        )
    if state.get("test_indices") is not None:
        full = load_dataset(trained.dataset, data, "train", **opts)  # type: ignore[arg-type]
        idx = np.asarray(state["test_indices"], dtype=np.int64)
        if len(idx) and idx.max() >= len(full):
            raise ValueError(f"{data}: has {len(full)} images, fewer than the held-out test images of {checkpoint}")
        test = full.subset(idx)
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


def train(cfg: TrainConfig, data: tuple | None = None) -> list[dict[str, Any]]:
    """Train (or with ``cfg.resume`` continue) an evaluation network; returns the per-epoch metrics. The process
    that writes the run folder (rank 0 under torchrun) holds its write lock; a folder that holds another run's
    files is refused unless ``cfg.resume`` continues it or ``cfg.overwrite`` replaces it."""
    trainer = build_trainer(cfg, data)
    rank, _ = world()
    with trainer.run.writer() if trainer.run is not None else contextlib.nullcontext():
        if cfg.resume:
            trainer.load_state(RunFolder(cfg.out).load_checkpoint("train"))
        elif trainer.run is not None and trainer.run.run_files():
            if not cfg.overwrite:
                raise FileExistsError(
                    f"{cfg.out} holds another run ({', '.join(trainer.run.run_files())}): pass --resume to continue "
                    "it, --overwrite to replace it, or choose another --out"
                )
            trainer.run.clear()
        if trainer.run is not None:
            described = {"data_description": trainer.data_description} if trainer.data_description else {}
            trainer.run.write_json("config.json", {**cfg.to_json(), **described})
        history = trainer.run_epochs()
        if trainer.run is not None:
            from mdarts_rs.plots import plot_learning_curves

            plot_learning_curves(history, trainer.run.path / "learning_curves.png")
    return history
