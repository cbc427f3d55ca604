"""The search loop: first-order bilevel optimisation of DARTS (Liu et al. 2019, section 2.3, ξ = 0) with
the α objective of multi-level DARTS, L_val + γ·L_entropy (Li, Chen, Sun 2021, eqs. 6-7).

Each step makes one α update on an S_val batch (Adam), then one weight update on an S_train batch (SGD
with momentum, cosine learning rate, gradient clipping). After every epoch the genotype is derived in Rust
and the diagnostics the paper's argument rests on are logged: op counts per level (skip_connect above
all), mean edge entropy per table, and the gap between the supernet and the derived network.

This module runs the loop and touches no file: where checkpoints and epoch records go is a ``Recorder``'s
business (``mdarts_rs.run`` writes them to a run folder).
"""

from __future__ import annotations

import hashlib
import math
import re
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mdarts_rs import _core
from mdarts_rs.config import SearchConfig, resume_conflicts
from mdarts_rs.data import CifarLoader, augment_images, search_split
from mdarts_rs.datasets import Dataset, as_dataset, description_conflicts
from mdarts_rs.device import resolve_device
from mdarts_rs.distributed import all_reduce_tensors_, any_rank, barrier, ranks_disagree
from mdarts_rs.distributed import world as _world
from mdarts_rs.search.supernet import SuperNet, Weights, kept_edges, one_hot_weights

#: Config fields that may differ when resuming a run.
RESUMABLE_CHANGES = {
    "resume",
    "overwrite",
    "quiet",
    "plots",
    "device",
    "workers",
    "out",
    "data",
    "cuda_graph",
    "deterministic",
}  # not "fast": weights differ in layout

#: What one search step reports (``_step_stats``' keys), in the order ``train_step`` stacks them for one copy.
STEP_STATS = ("a_loss", "val_loss", "train_loss", "entropy_loss", "val_correct", "train_correct")


class SearchDiverged(RuntimeError):
    """A loss, α, a weight, a batch-norm statistic or an optimizer state became NaN or infinite; the last good
    checkpoint is kept."""


class SearchInterrupted(RuntimeError):
    """SIGINT or SIGTERM arrived (on any rank); the run was saved and can be resumed."""


class RanksDisagree(RuntimeError):
    """The ranks of one search hold different α or weights (a checksum compared after every epoch)."""


@dataclass
class SearchResult:
    """What a finished search returns."""

    genotype: _core.Genotype | _core.MultiLevelGenotype
    history: list[dict[str, Any]]
    model: SuperNet


class Recorder(Protocol):
    """Where a search's checkpoints and epoch records go (``mdarts_rs.run.SearchRecorder``: a run folder)."""

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Keep ``state`` (``Searcher.state()``), replacing the previous one."""

    def end_epoch(
        self, record: dict[str, Any], genotype: _core.Genotype | _core.MultiLevelGenotype, history: list[dict[str, Any]]
    ) -> None:
        """An epoch has finished: its record, the genotype derived after it, and every record so far."""

    def describe(self) -> str:
        """Where the last checkpoint is, for messages."""


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The classification loss in float32 at least: bfloat16 logits (autocast) are cast up, float64 ones kept."""
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), y)


def entropy_loss(h: Weights, reduction: str) -> torch.Tensor:
    """L_entropy = −Σ p·ln p over every edge of every table (eq. 6); ``mean`` divides by the edge count."""
    hs = torch.cat([v for v in h.values()])
    return hs.sum() if reduction == "sum" else hs.mean()


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Run BN layers on batch statistics and leave their running statistics as they were: restored from a copy,
    since a momentum of 0 would still write 1·running + 0·batch, which is NaN for a NaN batch statistic."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.training, {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None}) for m in bns]
    for m in bns:
        m.train()
    try:
        yield
    finally:
        with torch.no_grad():
            for m, training, buffers in saved:
                m.train(training)
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)


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


def non_finite_state(model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> list[str]:
    """The names of the model's floating-point state tensors (parameters and buffers) and the optimizers' state
    tensors that hold NaN or infinite values, with one host synchronisation for all of them."""
    named = [(f"model {k}", t) for k, t in model.state_dict().items() if t.is_floating_point()]
    for opt_name, opt in optimizers.items():
        for i, st in enumerate(opt.state.values()):
            named += [
                (f"{opt_name} state {i} {k}", t) for k, t in st.items() if torch.is_tensor(t) and t.is_floating_point()
            ]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


def first_names(names: list[str], k: int = 3) -> str:
    """The first ``k`` of ``names``, and how many more there are, for a message."""
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """A short text that changes with the images or labels a search reads (their count and a hash of both), so
    that a resumed run is known to read the same data whatever its path."""
    h = hashlib.blake2b(digest_size=12)
    h.update(np.ascontiguousarray(images).data)
    h.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return f"{len(labels)} images, blake2b {h.hexdigest()}"


class _Signals:
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step (main thread only)."""

    def __init__(self) -> None:
        self.caught: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.caught = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Searcher:
    """One search run over in-memory training images: a ``Dataset`` (``mdarts_rs.datasets``), or CIFAR-10's
    uint8 images (N, 3, 32, 32) and labels.

    Under torchrun the ranks run one search together: every rank reads the same global batches, takes its
    share of each (``_chunks``) and the gradients are summed over ranks before both optimizers, so N ranks
    compute what one process computes with ``micro_batches = N``. ``world`` (rank, world size) defaults to the
    process group's; (0, 1) runs a search of its own in a process of a group (a sweep spread over ranks)."""

    def __init__(
        self,
        cfg: SearchConfig,
        images: Dataset | np.ndarray,
        labels: np.ndarray | None = None,
        recorder: Recorder | None = None,
        world: tuple[int, int] | None = None,
    ):
        self.cfg = cfg
        self.recorder = recorder
        self.rank, self.world_size = world if world is not None else _world()
        #: the global batch is split into this many chunks; rank r computes chunks r·K .. r·K + K − 1
        self.chunks = self.world_size * cfg.micro_batches
        if self.world_size > 1:
            if cfg.order == 2:
                raise ValueError(
                    "order 2 is not supported over several processes (the unrolled step needs the whole batch's "
                    "weight gradient first): use order 1, or one process"
                )
            if cfg.cuda_graph:
                raise ValueError("--cuda-graph is not supported under torchrun yet: drop it, or run one process")
            if cfg.batch_size < self.chunks:
                raise ValueError(
                    f"batch_size = {cfg.batch_size} is smaller than {self.world_size} processes × {cfg.micro_batches} "
                    "micro-batches: every chunk needs an image"
                )
        self.device = resolve_device(cfg.device)
        self.data = data = as_dataset(images, labels, cfg.dataset)
        images, labels = data.images, data.labels
        self.model = SuperNet(
            cfg.init_channels,
            data.num_classes,
            cfg.layers,
            cfg.alpha_mode,
            seed=cfg.seed,
            fast=cfg.fast,
            partial_channels=cfg.partial_channels,
            in_channels=data.channels,
            image_size=data.image_size,
        ).to(self.device)
        if self.device.type == "cuda":
            # float32 semantics unless --tf32 (cuDNN's own default would run convolutions in TF32), and
            # cuDNN's autotuner for the fixed shapes of a search, as DARTS' code sets it, unless
            # --deterministic asks for cuDNN's deterministic algorithms (run-to-run identical results).
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
            torch.backends.cudnn.benchmark = not cfg.deterministic
            torch.backends.cudnn.deterministic = cfg.deterministic
        self.data_fingerprint = data_fingerprint(images, labels)
        train_idx, val_idx = search_split(len(labels), cfg.portion, cfg.seed)
        common = dict(
            batch_size=cfg.batch_size,
            workers=cfg.workers,
            device=self.device,
            pin_memory=self.device.type == "cuda",
            mean=data.mean,
            std=data.std,
            num_classes=data.num_classes,
        )
        self.train_loader = CifarLoader(images, labels, train_idx, seed=cfg.seed, **common)  # type: ignore[arg-type]
        self.val_loader = CifarLoader(images, labels, val_idx, seed=cfg.seed + 1, **common)  # type: ignore[arg-type]
        if len(self.train_loader) == 0:
            raise ValueError(
                f"S_train has {self.train_loader.num_images} images, fewer than one batch of {cfg.batch_size}: "
                "raise --portion or lower --batch-size"
            )
        gap_idx = val_idx[: cfg.gap_images]
        gap_images = augment_images(
            np.ascontiguousarray(images[gap_idx]), crop_padding=0, flip=False, mean=data.mean, std=data.std
        )
        self.gap_x = torch.from_numpy(gap_images).to(self.device)
        self.gap_y = torch.from_numpy(labels[gap_idx]).to(self.device)
        self.w_opt = torch.optim.SGD(
            self.model.weight_parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, cfg.epochs, eta_min=cfg.lr_min)
        self.use_graph = cfg.cuda_graph and self.device.type == "cuda"
        if cfg.cuda_graph and not self.use_graph:
            tqdm.write("--cuda-graph needs a CUDA device; running the steps eagerly")
        self.a_opt = torch.optim.Adam(
            self.model.arch_parameters(),
            cfg.arch_lr,
            betas=cfg.arch_betas,
            weight_decay=cfg.arch_weight_decay,
            capturable=self.use_graph,
        )
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_warmup = 0
        self._acc_dev: torch.Tensor | None = None  # graph mode: the epoch's TOTALS summed on the device
        self._neg_lr = torch.zeros((), device=self.device)  # graph mode: −lr, read by the captured update
        self.steps = (
            len(self.train_loader) if cfg.steps_per_epoch is None else min(cfg.steps_per_epoch, len(self.train_loader))
        )
        self.steps = min(self.steps, len(self.val_loader))
        self.epoch, self.step_in_epoch = 0, 0
        self.acc = self._zero_acc()
        self.history: list[dict[str, Any]] = []

    #: The epoch's running totals, in the order ``_add_totals`` and the device statistics use.
    TOTALS = ("train_loss", "val_loss", "train_correct", "val_correct", "n_train", "n_val", "entropy_loss")

    @classmethod
    def _zero_acc(cls) -> dict[str, float]:
        return dict.fromkeys(cls.TOTALS, 0.0)

    def _add_totals(self, values: list[float] | tuple[float, ...]) -> None:
        """Add one value per name of ``TOTALS`` to the epoch's totals."""
        for key, v in zip(self.TOTALS, values):
            self.acc[key] += v

    @staticmethod
    def _step_totals(stats: dict[str, Any], n_t: int, n_v: int) -> list[Any]:
        """A step's contribution to each of ``TOTALS`` (floats, or tensors on the device in graph mode)."""
        return [
            stats["train_loss"] * n_t,
            stats["val_loss"] * n_v,
            stats["train_correct"],
            stats["val_correct"],
            n_t,
            n_v,
            stats["entropy_loss"],
        ]

    # ---- checkpoints ----------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "format": 1,
            "config": self.cfg.to_json(),
            "epoch": self.epoch,
            "step": self.step_in_epoch,
            "acc": dict(self.acc),
            "history": list(self.history),
            "model": self.model.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "sched": self.sched.state_dict(),
            "data": self.data_fingerprint,
            "dataset": self.data.describe(),
            "world_size": self.world_size,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        resume_conflicts(SearchConfig.from_json(state["config"]).to_json(), self.cfg.to_json(), RESUMABLE_CHANGES)
        changed = description_conflicts(state.get("dataset"), self.data.describe())
        if changed:
            raise ValueError(f"cannot resume with a different dataset ({', '.join(changed)})")
        if state.get("data") != self.data_fingerprint:
            raise ValueError(
                f"cannot resume with other data: the run searched {state.get('data')}, this data is "
                f"{self.data_fingerprint} (another CIFAR-10 copy or subset)"
            )
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:
            raise ValueError(
                f"cannot resume a search of {saved_world} processes with {self.world_size}: each process computes "
                "its own chunks' batch-norm statistics; resume it with the same torchrun --nproc_per_node × --nnodes"
            )
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self._adam_for_this_mode()
        self.sched.load_state_dict(state["sched"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step"])
        self.acc = dict(state["acc"])
        self.history = list(state["history"])

    def _adam_for_this_mode(self) -> None:
        """A loaded Adam state keeps the mode it was saved in: ``capturable`` and where its step counts live.
        ``--cuda-graph`` may change on resuming, so they follow this run: a captured step needs capturable
        Adam with its counts on the device, an eager one counts on the host (no synchronisation per step)."""
        for group in self.a_opt.param_groups:
            group["capturable"] = self.use_graph
        for param, st in self.a_opt.state.items():
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(param.device if self.use_graph else "cpu")

    def save(self) -> None:
        """Checkpoint the run, after checking that the state holds finite values only (so the last checkpoint
        is always a good one)."""
        self.flush_device_stats()
        self._check_state_finite()
        if self.recorder is not None:
            self.recorder.save_checkpoint(self.state())

    def _check_state_finite(self) -> None:
        """SearchDiverged unless α, the weights, the batch-norm running statistics and both optimizers' states
        are all finite."""
        bad = non_finite_state(self.model, {"weight optimizer": self.w_opt, "α optimizer": self.a_opt})
        if bad:
            raise SearchDiverged(
                f"epoch {self.epoch} step {self.step_in_epoch}: {len(bad)} tensors hold NaN or infinite values "
                f"({first_names(bad)}); "
                f"{self._kept()}; lower the learning rates or the weight decay"
            )

    def _check_ranks_agree(self) -> None:
        """RanksDisagree unless every rank holds the same α and weights (a float64 checksum per tensor: its sum
        and its sum of squares, compared over ranks); batch-norm statistics are per rank and not compared."""
        if self.world_size == 1:
            return
        tensors = [*self.model.arch_parameters(), *self.model.weight_parameters()]
        sums = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors]).reshape(-1)
        if ranks_disagree(sums):
            raise RanksDisagree(
                f"epoch {self.epoch}: the {self.world_size} ranks hold different α or weights (a rank computed "
                f"another step, or one's hardware misbehaves); {self._kept()}"
            )

    # ---- one step -------------------------------------------------------------------------------------

    def _step_stats(
        self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One α update on (xv, yv) (none before ``arch_start_epoch``: the α loss is only evaluated), then one
        weight update on (xt, yt), without host synchronisation.

        Returns the step's ``STEP_STATS``, 0-dim tensors on the device."""
        if self.chunks > 1:
            return self._chunked_step_stats(xt, yt, xv, yv)
        cfg, model = self.cfg, self.model
        if self.epoch < cfg.arch_start_epoch:
            a_loss, loss_v, ent, logits_v = self._arch_loss_only(xv, yv)
        elif cfg.order == 2:
            a_loss, loss_v, ent, logits_v = self._arch_step_second_order(xt, yt, xv, yv)
        else:
            a_loss, loss_v, ent, logits_v = self._arch_step(xv, yv)
        # Weight step with the updated α, held fixed: its softmax weights, without the entropies.
        with torch.no_grad():
            p, _ = model.softmax_entropy()
            e = model.edge_weights()
        self.w_opt.zero_grad(set_to_none=True)
        with self._autocast():
            logits = model(xt, p, edge_weights=e)
        loss = cross_entropy(logits, yt)
        loss.backward()
        params = model.weight_parameters()
        nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True if self.use_graph else None)
        if self.use_graph:
            self._sgd_step(params)
        else:
            self.w_opt.step()
        return {
            "a_loss": a_loss.detach(),
            "val_loss": loss_v.detach(),
            "train_loss": loss.detach(),
            "entropy_loss": ent.detach(),
            "val_correct": (logits_v.argmax(1) == yv).sum().to(loss.dtype),
            "train_correct": (logits.argmax(1) == yt).sum().to(loss.dtype),
        }

    def _chunks(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """This process's chunks of a global batch, each with its share of the batch: the batch split into
        world size × micro_batches near-equal parts (sizes differ by one at most), rank r taking K consecutive
        ones."""
        k = self.cfg.micro_batches
        xs, ys = torch.tensor_split(x, self.chunks), torch.tensor_split(y, self.chunks)
        assert len(ys[-1]) > 0, f"a batch of {len(y)} images cannot be split into {self.chunks} chunks"
        return [(xs[i], ys[i], len(ys[i]) / len(y)) for i in range(self.rank * k, (self.rank + 1) * k)]

    def _chunked_step_stats(
        self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``_step_stats`` with the batches split into chunks (``--micro-batches``, torchrun ranks): each chunk's
        gradients, weighted by its share of the batch, are summed (over ranks too) before each update, which
        makes them the whole batch's mean-loss gradients; batch norm takes each chunk's own statistics. The
        statistics are the same weighted sums (losses: batch means) and summed counts, alike on every rank."""
        cfg, model = self.cfg, self.model
        alphas = model.arch_parameters()
        moving = self.epoch >= cfg.arch_start_epoch
        a_grads = [torch.zeros_like(a) for a in alphas]
        val = []  # per chunk: (a_loss, L_val, L_entropy) weighted, correct count
        for x, y, share in self._chunks(xv, yv):
            if moving:
                a_loss, loss_v, ent, logits_v = self._arch_loss(x, y)
                for acc, g in zip(a_grads, torch.autograd.grad(a_loss * share, alphas)):
                    acc.add_(g)
            else:
                a_loss, loss_v, ent, logits_v = self._arch_loss_only(x, y)
            correct = (logits_v.argmax(1) == y).sum().to(loss_v.dtype)
            val.append(torch.stack([a_loss.detach() * share, loss_v.detach() * share, ent.detach() * share, correct]))
        if moving:
            self._sum_over_ranks(a_grads)
            for a, g in zip(alphas, a_grads):
                a.grad = g
            self.a_opt.step()
        # Weight step with the updated α, held fixed: its softmax weights, without the entropies.
        with torch.no_grad():
            p, _ = model.softmax_entropy()
            e = model.edge_weights()
        self.w_opt.zero_grad(set_to_none=True)
        train = []  # per chunk: L_train weighted, correct count
        for x, y, share in self._chunks(xt, yt):
            with self._autocast():
                logits = model(x, p, edge_weights=e)
            loss = cross_entropy(logits, y)
            (loss * share).backward()
            train.append(torch.stack([loss.detach() * share, (logits.argmax(1) == y).sum().to(loss.dtype)]))
        params = model.weight_parameters()
        # parameters without a gradient have none on every rank (the same network reads the same inputs)
        self._sum_over_ranks([q.grad for q in params if q.grad is not None])
        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        self.w_opt.step()
        v, t = torch.stack(val).sum(0), torch.stack(train).sum(0)
        stats = torch.cat([v.to(t.dtype), t])
        self._sum_over_ranks([stats])
        a_loss, val_loss, ent, val_correct, train_loss, train_correct = stats.unbind()
        return {
            "a_loss": a_loss,
            "val_loss": val_loss,
            "train_loss": train_loss,
            "entropy_loss": ent,
            "val_correct": val_correct,
            "train_correct": train_correct,
        }

    def _sum_over_ranks(self, tensors: list[torch.Tensor]) -> None:
        """Sum ``tensors`` over the ranks of this search in place (nothing in a search of one process)."""
        if self.world_size > 1:
            all_reduce_tensors_(tensors)

    def _arch_loss(
        self, xv: torch.Tensor, yv: torch.Tensor, params: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L_val + γ·L_entropy, L_val, L_entropy, logits) on (xv, yv), with the weights ``params`` in place of
        the network's own where given."""
        cfg, model = self.cfg, self.model
        p, h = model.softmax_entropy()
        e = model.edge_weights()
        with self._autocast():
            if params is None:
                logits_v = model(xv, p, edge_weights=e)
            else:
                logits_v = torch.func.functional_call(model, params, (xv, p), {"edge_weights": e})
        loss_v = cross_entropy(logits_v, yv)
        ent = entropy_loss(h, cfg.entropy_reduction)
        a_loss = loss_v + cfg.gamma * ent if cfg.gamma else loss_v
        return a_loss, loss_v, ent, logits_v

    def _arch_step(
        self, xv: torch.Tensor, yv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """First-order α step: gradients of L_val + γ·L_entropy with respect to α only (the weight gradients
        this backward would also produce are never used, so autograd.grad skips them)."""
        a_loss, loss_v, ent, logits_v = self._arch_loss(xv, yv)
        alphas = self.model.arch_parameters()
        grads = torch.autograd.grad(a_loss, alphas)
        for a, g in zip(alphas, grads):
            a.grad = g
        self.a_opt.step()
        return a_loss, loss_v, ent, logits_v

    def _arch_loss_only(
        self, xv: torch.Tensor, yv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """α warm-up (``arch_start_epoch``): the α loss evaluated for the diagnostics; α does not move."""
        with torch.no_grad():
            return self._arch_loss(xv, yv)

    def unrolled_arch_gradients(
        self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, fd_step: float = 0.01
    ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """DARTS' second-order α gradient (Liu et al. 2019, eqs. 6-8) and the α loss at the unrolled weights.

        w' = w − ξ·(μ·m + ∇_w L_train(w, α) + λ·w), with ξ the weight learning rate, m the SGD momentum buffer
        (zero before the first weight step), μ the momentum and λ the weight decay; the gradient is
        ∇_α L_val(w', α) − ξ·(∇_α L_train(w⁺, α) − ∇_α L_train(w⁻, α)) / (2ε), with w± = w ± ε·∇_w' L_val(w', α)
        and ε = ``fd_step`` / ‖∇_w' L_val(w', α)‖ (DARTS: 0.01); γ·∇_α L_entropy is added directly. Every pass
        runs batch norm on its own batch's statistics and leaves the running statistics as they were."""
        cfg, model = self.cfg, self.model
        names, weights = zip(*[(n, q) for n, q in model.named_parameters() if not n.startswith("alphas.")])
        arch = model.arch_parameters()
        xi = self.w_opt.param_groups[0]["lr"]

        def train_loss(params: dict[str, torch.Tensor] | None, p: Any, e: Any) -> torch.Tensor:
            with self._autocast():
                if params is None:
                    logits = model(xt, p, edge_weights=e)
                else:
                    logits = torch.func.functional_call(model, params, (xt, p), {"edge_weights": e})
            return cross_entropy(logits, yt)

        with batch_statistics(model):
            with torch.no_grad():
                p, _ = model.softmax_entropy()
                e = model.edge_weights()
            g_train = torch.autograd.grad(train_loss(None, p, e), weights, allow_unused=True)
            with torch.no_grad():
                unrolled = []
                for w, g in zip(weights, g_train):
                    buf = self.w_opt.state.get(w, {}).get("momentum_buffer")
                    step = w * cfg.weight_decay if g is None else g + w * cfg.weight_decay
                    if buf is not None:
                        step = step + cfg.momentum * buf
                    unrolled.append((w - xi * step).requires_grad_())
            a_loss, loss_v, ent, logits_v = self._arch_loss(xv, yv, dict(zip(names, unrolled)))
            grads = torch.autograd.grad(a_loss, [*arch, *unrolled], allow_unused=True)
            d_arch = [torch.zeros_like(a) if g is None else g for a, g in zip(arch, grads[: len(arch)])]
            v = [torch.zeros_like(w) if g is None else g for w, g in zip(unrolled, grads[len(arch) :])]
            eps = fd_step / torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in v]))
            fd = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    moved = {n: w + sign * eps * d for n, w, d in zip(names, weights, v)}
                p, _ = model.softmax_entropy()
                fd.append(torch.autograd.grad(train_loss(moved, p, model.edge_weights()), arch, allow_unused=True))
        out = []
        for a, d, gp, gm in zip(arch, d_arch, *fd):
            hess = 0 if gp is None or gm is None else (gp - gm) / (2 * eps)
            out.append(d - xi * hess)
        return out, (a_loss, loss_v, ent, logits_v)

    def _arch_step_second_order(
        self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Second-order α step (``order = 2``): ``unrolled_arch_gradients``, then Adam."""
        grads, losses = self.unrolled_arch_gradients(xt, yt, xv, yv)
        for a, g in zip(self.model.arch_parameters(), grads):
            a.grad = g
        self.a_opt.step()
        return losses

    def train_step(self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> dict[str, float]:
        """One α update on (xv, yv), then one weight update on (xt, yt); its statistics, checked finite."""
        stats = self._step_stats(xt, yt, xv, yv)
        values = torch.stack([stats[k] for k in STEP_STATS]).tolist()  # one host synchronisation for all
        out = dict(zip(STEP_STATS, values))
        self._check_finite(out)
        return out

    # ---- CUDA graph mode ------------------------------------------------------------------------------

    @torch.no_grad()
    def _sgd_step(self, params: list[nn.Parameter]) -> None:
        """SGD with momentum and weight decay as torch.optim.SGD computes it (dampening 0, no Nesterov), with
        the learning rate read from a device tensor so that the update can be captured in a CUDA graph.
        The momentum buffers are torch.optim.SGD's own state, so checkpoints do not depend on the mode."""
        cfg = self.cfg
        for q in params:
            state = self.w_opt.state[q]
            if state.get("momentum_buffer") is None:  # eager warm-up steps create them, never the capture
                state["momentum_buffer"] = torch.zeros_like(q)  # torch's first step: buf = grad = 0.9·0 + grad
        live = [q for q in params if q.grad is not None]
        grads = [q.grad for q in live]
        bufs = [self.w_opt.state[q]["momentum_buffer"] for q in live]
        torch._foreach_add_(grads, live, alpha=cfg.weight_decay)
        torch._foreach_mul_(bufs, cfg.momentum)
        torch._foreach_add_(bufs, grads)
        torch._foreach_add_(live, torch._foreach_mul(bufs, self._neg_lr))

    def _accumulate(self, stats: dict[str, torch.Tensor], n_t: int, n_v: int) -> None:
        """Add a step's TOTALS to the epoch's, on the device."""
        ref = stats["train_loss"]
        # torch.full launches a fill kernel; a tensor made from a number would copy from the host at every step.
        totals = [
            v if torch.is_tensor(v) else torch.full((), float(v), device=ref.device, dtype=ref.dtype)
            for v in self._step_totals(stats, n_t, n_v)
        ]
        row = torch.stack(totals)
        self._acc_dev = row if self._acc_dev is None else self._acc_dev + row

    def flush_device_stats(self) -> None:
        """Fold the statistics summed on the device into the epoch's totals and check they are finite."""
        if self._acc_dev is None:
            return
        totals = dict(zip(self.TOTALS, self._acc_dev.tolist()))
        self._acc_dev = None
        self._add_totals(list(totals.values()))
        self._check_finite({"a_loss": totals["val_loss"] + totals["entropy_loss"], "train_loss": totals["train_loss"]})

    def graph_step(self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> None:
        """One step replayed from a CUDA graph (captured after 3 eager warm-up steps on a side stream); the
        statistics stay on the device until ``flush_device_stats``. If capture fails, the run continues
        eagerly with a message."""
        if self._graph is None and self._graph_warmup >= 0:
            if self._graph_warmup < 3:
                self._graph_warmup += 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self._set_lr()
                    stats = self._step_stats(xt, yt, xv, yv)
                torch.cuda.current_stream().wait_stream(side)
                self._accumulate(stats, len(yt), len(yv))  # on the main stream, where the totals live
                return
            try:
                self._static = [t.clone() for t in (xt, yt, xv, yv)]
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._static_stats = self._step_stats(*self._static)
                self._graph = graph
            except Exception as e:  # anything that cannot be captured
                self._graph_warmup = -1
                tqdm.write(f"CUDA graph capture failed ({type(e).__name__}: {e}); continuing eagerly")
        self._set_lr()
        if self._graph is None:
            self._accumulate(self._step_stats(xt, yt, xv, yv), len(yt), len(yv))
            return
        for dst, src in zip(self._static, (xt, yt, xv, yv)):
            dst.copy_(src, non_blocking=True)
        self._graph.replay()
        self._accumulate(self._static_stats, len(yt), len(yv))

    def _set_lr(self) -> None:
        self._neg_lr.fill_(-self.w_opt.param_groups[0]["lr"])  # outside the graph, so replays see the schedule

    def _autocast(self) -> torch.autocast:
        """bfloat16 autocast of the network's forward when ``cfg.bf16`` (α, its softmax and the losses stay float32)."""
        # The autocast cache holds casts made during a CUDA-graph capture, so it is off in graph mode.
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16, cache_enabled=not self.use_graph
        )

    def _check_finite(self, out: dict[str, float]) -> None:
        where = f"epoch {self.epoch} step {self.step_in_epoch}"
        for key in ("a_loss", "train_loss"):
            if not math.isfinite(out[key]):
                raise SearchDiverged(
                    f"{where}: the {'α' if key == 'a_loss' else 'weight'} loss is {out[key]}; {self._kept()}"
                )
        for name, a in zip(self.model.arch_parameter_names(), self.model.arch_parameters()):
            if not bool(torch.isfinite(a).all()):
                raise SearchDiverged(f"{where}: {name} holds NaN or infinite values; {self._kept()}")

    def _kept(self) -> str:
        if self.recorder is None:
            return "the run stopped (no run folder)"
        return f"the run stopped; {self.recorder.describe()}"

    # ---- one epoch ------------------------------------------------------------------------------------

    def end_epoch(self, seconds: float) -> dict[str, Any]:
        self.flush_device_stats()
        self._check_state_finite()  # before anything of this epoch is written
        self._check_ranks_agree()
        model = self.model
        with torch.no_grad():
            p, h = model.softmax_entropy()  # once for the genotype, the entropies and the supernet's accuracy
            e = model.edge_weights()
        genotype = model.genotype(p, e, max_skip=self.cfg.max_skip)
        acc = self.acc
        sup = gap_accuracy(model, self.gap_x, self.gap_y, p, e, sparse=False)
        kept = None if e is None else kept_edges(genotype, self.device)
        der = gap_accuracy(model, self.gap_x, self.gap_y, one_hot_weights(genotype, self.device), kept, sparse=True)
        op_counts = {t: c.op_counts() for t, c in genotype.cells.items()}
        rec = {
            "epoch": self.epoch,
            "lr": self.w_opt.param_groups[0]["lr"],
            "train_loss": acc["train_loss"] / max(1, acc["n_train"]),
            "train_acc": acc["train_correct"] / max(1, acc["n_train"]),
            "val_loss": acc["val_loss"] / max(1, acc["n_val"]),
            "val_acc": acc["val_correct"] / max(1, acc["n_val"]),
            "entropy_loss": acc["entropy_loss"] / max(1, self.steps),
            "entropy": {t: float(v.mean()) for t, v in h.items()},
            "op_counts": op_counts,
            "skip_connect": {t: c["skip_connect"] for t, c in op_counts.items()},
            "gap": {"supernet_acc": sup, "derived_acc": der, "gap": sup - der, "images": len(self.gap_y)},
            "genotype": genotype.to_json(),
            "seconds": seconds,
        }
        self.history.append(rec)
        with warnings.catch_warnings():
            if self.use_graph:  # the captured update replaces w_opt.step(), which torch's scheduler looks for
                warnings.filterwarnings(
                    "ignore", message=re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`")
                )
            self.sched.step()
        self.epoch += 1
        self.step_in_epoch = 0
        self.acc = self._zero_acc()
        if self.recorder is not None:
            # checked finite and flushed above; the gap's passes leave the state as it was
            self.recorder.end_epoch(rec, genotype, self.history)
            self.recorder.save_checkpoint(self.state())
        return rec

    def run_epochs(self) -> SearchResult:
        cfg = self.cfg
        with _Signals() as sig:
            while self.epoch < cfg.epochs:
                t0 = time.time()
                batches = zip(
                    self.train_loader.batches(self.epoch, self.step_in_epoch),
                    self.val_loader.batches(self.epoch, self.step_in_epoch),
                )
                bar = tqdm(
                    total=self.steps,
                    initial=self.step_in_epoch,
                    desc=f"{cfg.alpha_mode} γ={cfg.gamma:g} epoch {self.epoch + 1}/{cfg.epochs}",
                    disable=cfg.quiet,
                    leave=False,
                    unit="step",
                    dynamic_ncols=True,
                )
                for (xt, yt), (xv, yv) in batches:
                    if self.step_in_epoch >= self.steps:
                        break
                    if self.use_graph:
                        self.graph_step(xt, yt, xv, yv)
                        self.step_in_epoch += 1
                        if self.step_in_epoch % 50 == 0:  # the only host synchronisations of graph mode
                            self.flush_device_stats()
                            a = self.acc
                            bar.set_postfix(loss=f"{a['train_loss'] / max(1, a['n_train']):.3f}", refresh=False)
                        bar.update(1)
                    else:
                        out = self.train_step(xt, yt, xv, yv)
                        self._add_totals(self._step_totals(out, len(yt), len(yv)))
                        self.step_in_epoch += 1
                        bar.update(1)
                        bar.set_postfix(loss=f"{out['train_loss']:.3f}", val=f"{out['val_loss']:.3f}", refresh=False)
                    if self.world_size > 1 and any_rank(sig.caught is not None, self.device) and not sig.caught:
                        sig.caught = "a signal on another rank"  # all ranks stop after the same step
                    if sig.caught:
                        bar.close()
                        self.save()
                        if self.world_size > 1:
                            barrier()  # no rank exits (which makes torchrun stop the others) before the checkpoint
                        where = f"epoch {self.epoch} after step {self.step_in_epoch}"
                        saved = (
                            f"{self.recorder.describe()}; continue with --resume"
                            if self.recorder
                            else "not saved (no run folder)"
                        )
                        raise SearchInterrupted(f"{sig.caught} at {where}: {saved}")
                bar.close()
                rec = self.end_epoch(time.time() - t0)
                if not cfg.quiet:
                    skips = " ".join(f"{t}={n}" for t, n in rec["skip_connect"].items())
                    tqdm.write(
                        f"epoch {rec['epoch'] + 1}/{cfg.epochs}: train acc {rec['train_acc']:.3f} val acc {rec['val_acc']:.3f} "
                        f"gap {rec['gap']['gap']:+.3f} skip_connect {skips} ({rec['seconds']:.0f} s)"
                    )
        return SearchResult(genotype=self.model.genotype(max_skip=cfg.max_skip), history=self.history, model=self.model)
