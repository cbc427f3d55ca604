"""Training and testing the evaluation networks from scratch, as DARTS does on CIFAR-10 (Liu et al. 2019,
section A.2: 600 epochs, batch 96, SGD 0.025 cosine, momentum 0.9, weight decay 3e-4, clip 5, auxiliary
weight 0.4, cutout 16, drop-path 0.2 raised linearly) and as P-DARTS/PC-DARTS do on ImageNet (250 epochs,
batch 1024, lr 0.5 with 5 warm-up epochs and linear decay, label smoothing 0.1).

Under ``torchrun`` the same code trains with DistributedDataParallel: each rank reads its own shard of
the training set with ``batch_size / world_size`` images per step, and metrics are reduced over ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mdarts_rs.config import TrainConfig
from mdarts_rs.data import Dataset, as_dataset
from mdarts_rs.device import resolve_device
from mdarts_rs.distributed import all_reduce_sum, init_distributed, rank_loss_said
from mdarts_rs.distributed import world as _world
from mdarts_rs.evaluate.inputs import CifarData, imagenet_batches, train_test_data
from mdarts_rs.evaluate.network import NetworkCIFAR, NetworkImageNet
from mdarts_rs.evaluate.testing import accuracy, evaluate_network
from mdarts_rs.evaluate.trained import trained_network
from mdarts_rs.genotype import load_genotype
from mdarts_rs.guards import first_names, non_finite_state
from mdarts_rs.memory import check_fits, train_estimate
from mdarts_rs.plots import plot_learning_curves
from mdarts_rs.run import RunFolder, check_same_run, data_fingerprint, load_entries, open_run
from mdarts_rs.tensorboard import Board


def lr_at(cfg: TrainConfig, epoch: float) -> float:
    """Learning rate at a (fractional) epoch: linear warm-up, then cosine to 0 or linear decay to 0."""
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    t = (epoch - cfg.warmup_epochs) / max(1, cfg.epochs - cfg.warmup_epochs)
    if cfg.lr_schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))
    return cfg.lr * (1 - t)


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
        world: tuple[int, int] = (0, 1),
    ):
        self.cfg, self.device, self.run, self.genotype_json = cfg, device, run, genotype_json
        #: this process's place among the ranks of this training (DistributedDataParallel where several)
        self.rank, self.world_size = world
        #: the training data's description (``Dataset.describe()``) and, for data without a test set, the
        #: indices of the images held out as the test set (``data.holdout_split``)
        self.data_description, self.test_indices = data_description, test_indices
        #: what the training reads (CIFAR-10: the images' count and hash), checked on resume
        self.data_fingerprint = data_fingerprint
        self.class_names = class_names
        self.train_batches, self.test_batches = train_batches, test_batches
        self.model = model.to(device)
        self.net = self.model
        if self.world_size > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.opt = torch.optim.SGD(
            self.model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        #: the run's TensorBoard event files (rank 0, --tensorboard), opened by ``train`` once the checkpoint is read
        self.board: Board | None = None

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
        """Continue from a checkpoint of the same training (settings but the run's place and device, data)."""
        may_change = {"resume", "overwrite", "quiet", "device", "workers", "out", "data", "tensorboard", "log_every"}
        may_change.add("genotype")  # its path may change; the cell it names may not
        check_same_run(state, self.cfg, may_change, self.data_description, self.data_fingerprint, "trained on")
        if state.get("genotype") not in (None, self.genotype_json):
            raise ValueError(
                f"cannot resume with a different genotype: {self.cfg.genotype} is not the cell this run trained (its "
                "checkpoint holds that cell)"
            )
        load_entries(
            state,
            {"model": self.model.load_state_dict, "opt": self.opt.load_state_dict, "rng": torch.set_rng_state},
            "the network and optimizer of its settings",
        )
        self.epoch, self.history = int(state["epoch"]), list(state["history"])

    def _kept(self) -> str:
        if self.run is not None:
            return self.run.checkpoint_note()
        if self.world_size > 1:
            return f"rank 0 keeps the last good checkpoint in {self.cfg.out}"
        return "no checkpoint was written by this process"

    def train_epoch(self) -> dict[str, float]:
        cfg, model, net = self.cfg, self.model, self.net
        model.train()
        # Drop-path probability raised linearly over training (DARTS).
        model.drop_path_prob = cfg.drop_path * self.epoch / cfg.epochs
        steps = self.steps_per_epoch()
        sums = [0.0, 0.0, 0.0]  # loss·n, correct, n
        rank = self.rank
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
            done = self.epoch * steps + step + 1
            if self.board is not None and done % cfg.log_every == 0:
                self.board.scalars(done, {"step/train_loss": stats[0] / len(y), "lr": self.opt.param_groups[0]["lr"]})
            bar.update(1)
            bar.set_postfix(loss=f"{stats[0] / len(y):.3f}", refresh=False)
        bar.close()
        loss_sum, correct, n = all_reduce_sum(sums, self.device, self.world_size)
        return {
            "train_loss": loss_sum / max(n, 1),
            "train_acc": correct / max(n, 1),
            "lr": self.opt.param_groups[0]["lr"],
        }

    def steps_per_epoch(self) -> int:
        steps = len(self.train_batches)
        return steps if self.cfg.steps_per_epoch is None else min(steps, self.cfg.steps_per_epoch)

    def run_epochs(self) -> list[dict[str, Any]]:
        """Train the remaining epochs (a checkpoint after each); every epoch's record."""
        with rank_loss_said(self._kept, (self.rank, self.world_size)):
            while self.epoch < self.cfg.epochs:
                self._run_epoch()
        return self.history

    def _run_epoch(self) -> None:
        """One epoch: training, testing, the checks of the state, the record and the checkpoint."""
        rank = self.rank
        t0 = time.time()
        rec: dict[str, Any] = {"epoch": self.epoch, **self.train_epoch()}
        rec.update(evaluate_network(self.net, iter(self.test_batches), self.device, self.cfg.bf16, self.world_size))
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
            if self.board is not None:
                drop_path = self.cfg.drop_path * rec["epoch"] / self.cfg.epochs
                self.board.train_epoch(self.epoch * self.steps_per_epoch(), rec, drop_path)
            if not self.cfg.quiet:
                tqdm.write(
                    f"epoch {rec['epoch'] + 1}/{self.cfg.epochs}: train loss {rec['train_loss']:.3f} acc {rec['train_acc']:.3f}, "
                    f"test top-1 err {rec['top1_err']:.4f} top-5 err {rec['top5_err']:.4f} ({rec['seconds']:.0f} s)"
                )


def build_trainer(cfg: TrainConfig, data: tuple | None = None, world: tuple[int, int] | None = None) -> Trainer:
    """A Trainer for ``cfg``; ``data`` = (train, test) Datasets, or ((train images, labels), (test images,
    labels)) for CIFAR-10, else read from ``cfg.data``. ``world`` (rank, world size) defaults to torchrun's
    process group (joined here); (0, 1) trains alone in a process of a group (a protocol's runs spread over
    ranks)."""
    device = resolve_device(cfg.device)
    if world is None:
        device = init_distributed(device)
        world = _world()
    rank = world[0]
    torch.manual_seed(cfg.seed)
    genotype = load_genotype(cfg.genotype)
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
        d = CifarData(cfg, train_set, test_set, device, world)
        train_batches, test_batches = d.train, d.test
        description: dict[str, Any] | None = train_set.describe()
        in_channels, image_size = train_set.channels, train_set.image_size
    else:
        train_batches, test_batches, class_names = imagenet_batches(cfg, device, world)  # the folders in train/
        fingerprint = None  # an ImageFolder is not fingerprinted
        description, in_channels, image_size = None, 3, 224
    per_step = math.ceil(cfg.batch_size / world[1])
    size = train_estimate(cfg.init_channels, cfg.layers, image_size, len(class_names), per_step, genotype, cfg.bf16)
    check_fits(size, device)
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
        world,
    )


def train(cfg: TrainConfig, data: tuple | None = None, world: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Train (or with ``cfg.resume`` continue) an evaluation network; returns the per-epoch metrics. The process
    that writes the run folder (rank 0 under torchrun) holds its write lock; a folder that holds another run's
    files is refused unless ``cfg.resume`` continues it or ``cfg.overwrite`` replaces it."""
    trainer = build_trainer(cfg, data, world)
    run = trainer.run
    with open_run(run, cfg.resume, cfg.overwrite, "train") if run is not None else contextlib.nullcontext() as state:
        if cfg.resume and run is None:  # ranks other than 0 read rank 0's folder: a shared filesystem
            state = RunFolder(cfg.out).load_checkpoint("train")
        if state is not None:
            trainer.load_state(state)
        if run is not None:
            described = {"data_description": trainer.data_description} if trainer.data_description else {}
            run.write_json("config.json", {**cfg.to_json(), **described})
            if cfg.tensorboard:  # what a stopped run logged after its checkpoint's step is dropped
                trainer.board = Board(run.path, trainer.epoch * trainer.steps_per_epoch() + 1)
        try:
            history = trainer.run_epochs()
        finally:
            if trainer.board is not None:
                trainer.board.close()
        if run is not None:
            plot_learning_curves(history, run.path / "learning_curves.png")
    return history


def train_seeds(
    cfg: TrainConfig, seeds: list[int], say: Callable[[str], None] = print
) -> list[tuple[TrainConfig, list[dict[str, Any]]]]:
    """``mdarts-rs train``: one training per seed, in ``cfg.out`` for one seed, else in ``cfg.out/seed<N>``; each
    run's settings and per-epoch metrics, and a line through ``say`` as each finishes."""
    out = []
    for seed in seeds:
        run_cfg = dataclasses.replace(cfg, seed=seed, out=cfg.out / f"seed{seed}" if len(seeds) > 1 else cfg.out)
        history = train(run_cfg)
        last = history[-1]
        say(
            f"{run_cfg.out}: top-1 error {last['top1_err']:.4f}, top-5 error {last['top5_err']:.4f} after "
            f"{len(history)} epochs"
        )
        out.append((run_cfg, history))
    return out
