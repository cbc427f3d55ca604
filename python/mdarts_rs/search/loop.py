"""The search loop: epochs of search steps (``search.step``), eagerly or replayed from a CUDA graph, then after every
epoch the derived genotype and its diagnostics (``search.diagnostics``), a checkpoint, and SIGINT/SIGTERM turned
into a saved, resumable stop.

This module touches no file: where checkpoints and epoch records go is a ``Recorder``'s business
(``search.runner`` writes them to a run folder).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from mdarts_rs import _core
from mdarts_rs.config import SearchConfig, derived_seed
from mdarts_rs.data import CifarLoader, Dataset, as_dataset, augment_images, search_split
from mdarts_rs.device import resolve_device
from mdarts_rs.distributed import any_rank, barrier, rank_loss_said, ranks_disagree
from mdarts_rs.distributed import world as _world
from mdarts_rs.guards import first_names, non_finite_state
from mdarts_rs.memory import Estimate, check_fits, search_estimate
from mdarts_rs.run import check_same_run, data_fingerprint, load_entries
from mdarts_rs.search.diagnostics import TOTALS, device_totals, epoch_record, step_totals
from mdarts_rs.search.graph import CapturedStep
from mdarts_rs.search.step import STEP_STATS, StepParts, search_step
from mdarts_rs.search.supernet import SuperNet

#: Config fields that may differ when resuming a run (not the supernet: its weights differ in layout).
RESUMABLE_CHANGES = {"resume", "overwrite", "quiet", "plots", "device", "workers", "out", "data", "cuda_graph"}
RESUMABLE_CHANGES |= {"deterministic", "tensorboard", "log_every"}


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
    """Where a search's checkpoints and epoch records go (``search.runner.SearchRecorder``: a run folder)."""

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Keep ``state`` (``Searcher.state()``), replacing the previous one."""

    def end_epoch(
        self, record: dict[str, Any], genotype: _core.Genotype | _core.MultiLevelGenotype, history: list[dict[str, Any]]
    ) -> None:
        """An epoch has finished: its record, the genotype derived after it, and every record so far."""

    # Optional (a recorder without them logs nothing more):

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """Every ``log_every`` steps: the step's losses, learning rates and gradient norms (TensorBoard)."""

    def log_epoch(
        self,
        step: int,
        record: dict[str, Any],
        genotype: _core.Genotype | _core.MultiLevelGenotype,
        alpha: dict[str, np.ndarray],
        steps: int,
    ) -> None:
        """After each epoch: its record, genotype and softmax(α) per table (TensorBoard)."""

    def describe(self) -> str:
        """Where the last checkpoint is, for messages."""


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


def _set_cuda_backends(cfg: SearchConfig) -> None:
    """float32 semantics unless --tf32 (cuDNN's own default would run convolutions in TF32), and cuDNN's autotuner
    for the fixed shapes of a search, as DARTS' code sets it, unless --deterministic asks for cuDNN's
    deterministic algorithms (run-to-run identical results)."""
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    torch.backends.cudnn.benchmark = not cfg.deterministic
    torch.backends.cudnn.deterministic = cfg.deterministic


def _loaders(
    cfg: SearchConfig, data: Dataset, device: torch.device
) -> tuple[CifarLoader, CifarLoader, tuple[torch.Tensor, torch.Tensor]]:
    """S_train's and S_val's loaders (the seeded half split of ``cfg.portion`` of the images), and the fixed,
    unaugmented S_val images of the supernet/derived gap."""
    train_idx, val_idx = search_split(len(data.labels), cfg.portion, cfg.seed)
    common = dict(batch_size=cfg.batch_size, workers=cfg.workers, device=device)
    train = CifarLoader.of(data, train_idx, seed=cfg.seed, **common)  # type: ignore[arg-type]
    val = CifarLoader.of(data, val_idx, seed=derived_seed(cfg.seed, 1), **common)  # type: ignore[arg-type]
    if len(train) == 0:
        raise ValueError(
            f"S_train has {train.num_images} images, fewer than one batch of {cfg.batch_size}: "
            "raise --portion or lower --batch-size"
        )
    gap_idx = val_idx[: cfg.gap_images]
    pixels = augment_images(
        np.ascontiguousarray(data.images[gap_idx]), crop_padding=0, flip=False, mean=data.mean, std=data.std
    )
    gap = (torch.from_numpy(pixels).to(device), torch.from_numpy(data.labels[gap_idx]).to(device))
    return train, val, gap


def search_size(cfg: SearchConfig, data: Dataset, world_size: int = 1) -> Estimate:
    """The memory estimate of ``cfg``'s supernet on ``data``: a process's chunk of each batch."""
    chunk = math.ceil(cfg.batch_size / (world_size * cfg.micro_batches))
    return search_estimate(
        cfg.init_channels,
        cfg.layers,
        data.image_size,
        data.num_classes,
        chunk,
        cfg.partial_channels,
        cfg.order,
        cfg.bf16,
        cfg.supernet,
    )


class Searcher:
    """One search run over in-memory training images: a ``Dataset`` (``mdarts_rs.data``), or CIFAR-10's uint8
    images (N, 3, 32, 32) and labels.

    Under torchrun the ranks run one search together: every rank reads the same global batches, takes its share
    of each and the gradients are summed over ranks before both optimizers, so N ranks compute what one process
    computes with ``micro_batches = N``. ``world`` (rank, world size) defaults to the process group's; (0, 1) runs
    a search of its own in a process of a group (a sweep spread over ranks)."""

    def __init__(
        self,
        cfg: SearchConfig,
        images: Dataset | np.ndarray,
        labels: np.ndarray | None = None,
        recorder: Recorder | None = None,
        world: tuple[int, int] | None = None,
    ):
        self.cfg, self.recorder = cfg, recorder
        self.rank, self.world_size = world if world is not None else _world()
        cfg.check_world(self.world_size)
        self.device = resolve_device(cfg.device)
        self.data = as_dataset(images, labels, cfg.dataset)
        # the batch against the data first, then the memory (a batch larger than the data is the clearer message)
        self.train_loader, self.val_loader, self.gap = _loaders(cfg, self.data, self.device)
        check_fits(search_size(cfg, self.data, self.world_size), self.device)
        self.model = SuperNet(
            cfg.init_channels,
            self.data.num_classes,
            cfg.layers,
            cfg.alpha_mode,
            seed=cfg.seed,
            fast=cfg.supernet == "batched",
            partial_channels=cfg.partial_channels,
            in_channels=self.data.channels,
            image_size=self.data.image_size,
        ).to(self.device)
        if self.device.type == "cuda":
            _set_cuda_backends(cfg)
        self.data_fingerprint = data_fingerprint(self.data.images, self.data.labels)
        self.use_graph = cfg.cuda_graph and self.device.type == "cuda"
        if cfg.cuda_graph and not self.use_graph:
            tqdm.write("--cuda-graph needs a CUDA device; running the steps eagerly")
        self.w_opt = torch.optim.SGD(
            self.model.weight_parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, cfg.epochs, eta_min=cfg.lr_min)
        self.a_opt = torch.optim.Adam(
            self.model.arch_parameters(),
            cfg.arch_lr,
            betas=cfg.arch_betas,
            weight_decay=cfg.arch_weight_decay,
            capturable=self.use_graph,
        )
        self.parts = StepParts(
            self.model, self.w_opt, self.a_opt, cfg, self.rank, self.world_size, graph_safe=self.use_graph
        )
        self.captured = CapturedStep(self._step, say=tqdm.write) if self.use_graph else None
        self.steps = min(len(self.train_loader), len(self.val_loader), cfg.steps_per_epoch or len(self.train_loader))
        self.epoch, self.step_in_epoch = 0, 0
        self.acc = dict.fromkeys(TOTALS, 0.0)
        self._device_acc: torch.Tensor | None = None  # graph mode: the epoch's totals summed on the device
        self.history: list[dict[str, Any]] = []

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
        """Continue from a checkpoint of the same search (settings but ``RESUMABLE_CHANGES``, data, processes)."""
        check_same_run(state, self.cfg, RESUMABLE_CHANGES, self.data.describe(), self.data_fingerprint, "searched")
        saved_world = state.get("world_size", 1)
        if saved_world != self.world_size:
            raise ValueError(
                f"cannot resume a search of {saved_world} processes with {self.world_size}: each process computes "
                "its own chunks' batch-norm statistics; resume it with the same torchrun --nproc_per_node × --nnodes"
            )
        load_entries(
            state,
            {
                "model": self.model.load_state_dict,
                "w_opt": self.w_opt.load_state_dict,
                "a_opt": self.a_opt.load_state_dict,
                "sched": self.sched.load_state_dict,
                "acc": self._load_totals,
            },
            "the supernet and optimizers of its settings",
        )
        self._adam_for_this_mode()
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])

    def _load_totals(self, acc: dict[str, Any]) -> None:
        """The epoch's totals so far, from a checkpoint (``TOTALS``, numbers)."""
        if set(acc) != set(TOTALS) or not all(isinstance(v, (int, float)) for v in acc.values()):
            raise ValueError(f"it must map {', '.join(TOTALS)} to numbers")
        self.acc = {k: float(v) for k, v in acc.items()}

    def _adam_for_this_mode(self) -> None:
        """A loaded Adam state keeps the mode it was saved in: ``capturable`` and where its step counts live.
        ``--cuda-graph`` may change on resuming, so they follow this run: a captured step needs capturable Adam
        with its counts on the device, an eager one counts on the host (no synchronisation per step)."""
        for group in self.a_opt.param_groups:
            group["capturable"] = self.use_graph
        for param, st in self.a_opt.state.items():
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(param.device if self.use_graph else "cpu")

    def save(self) -> None:
        """Checkpoint the run, after checking that the state holds finite values only (so the last checkpoint is
        always a good one)."""
        self.flush_device_stats()
        self._check_state_finite()
        if self.recorder is not None:
            self.recorder.save_checkpoint(self.state())

    # ---- checks ---------------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"epoch {self.epoch} step {self.step_in_epoch}"

    def _kept(self) -> str:
        return (
            "the run stopped (no run folder)"
            if self.recorder is None
            else f"the run stopped; {self.recorder.describe()}"
        )

    def _check_finite(self, out: dict[str, float]) -> None:
        """SearchDiverged for a non-finite loss of a step, or α that is no longer finite."""
        for key in ("a_loss", "train_loss"):
            if not math.isfinite(out[key]):
                which = "α" if key == "a_loss" else "weight"
                raise SearchDiverged(f"{self._where()}: the {which} loss is {out[key]}; {self._kept()}")
        for name, a in zip(self.model.arch_parameter_names(), self.model.arch_parameters()):
            if not bool(torch.isfinite(a).all()):
                raise SearchDiverged(f"{self._where()}: {name} holds NaN or infinite values; {self._kept()}")

    def _check_state_finite(self) -> None:
        """SearchDiverged unless α, the weights, the batch-norm running statistics and both optimizers' states are
        all finite."""
        bad = non_finite_state(self.model, {"weight optimizer": self.w_opt, "α optimizer": self.a_opt})
        if bad:
            raise SearchDiverged(
                f"{self._where()}: {len(bad)} tensors hold NaN or infinite values ({first_names(bad)}); "
                f"{self._kept()}; lower the learning rates or the weight decay"
            )

    def _check_ranks_agree(self) -> None:
        """RanksDisagree unless every rank holds the same α and weights (a float64 checksum per tensor: its sum and
        its sum of squares, compared over ranks); batch-norm statistics are per rank and not compared."""
        if self.world_size == 1:
            return
        tensors = [*self.model.arch_parameters(), *self.model.weight_parameters()]
        sums = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors]).reshape(-1)
        if ranks_disagree(sums):
            raise RanksDisagree(
                f"epoch {self.epoch}: the {self.world_size} ranks hold different α or weights (a rank computed "
                f"another step, or one's hardware misbehaves); {self._kept()}"
            )

    # ---- steps ----------------------------------------------------------------------------------------

    def _step(self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
        """``search_step`` of this run; α stays fixed during the warm-up (``arch_start_epoch``)."""
        return search_step(self.parts, xt, yt, xv, yv, update_alpha=self.epoch >= self.cfg.arch_start_epoch)

    def train_step(self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> dict[str, float]:
        """One eager step; its statistics (``STEP_STATS``, one host synchronisation), checked finite."""
        out = dict(zip(STEP_STATS, self._step(xt, yt, xv, yv).tolist()))
        self._check_finite(out)
        return out

    def graph_step(self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
        """One step replayed from the CUDA graph. Its statistics (``STEP_STATS``, on the device, valid until the
        next step) are added to the epoch's totals on the device, checked at ``flush_device_stats``."""
        assert self.captured is not None, "graph_step needs --cuda-graph on a CUDA device"
        stats = self.captured(xt, yt, xv, yv)
        totals = device_totals(stats, len(yt), len(yv))
        self._device_acc = totals if self._device_acc is None else self._device_acc + totals
        return stats

    def flush_device_stats(self) -> None:
        """Fold the totals summed on the device into the epoch's and check that they are finite."""
        if self._device_acc is None:
            return
        totals = dict(zip(TOTALS, self._device_acc.tolist()))
        self._device_acc = None
        for k, v in totals.items():
            self.acc[k] += v
        self._check_finite({"a_loss": totals["val_loss"] + totals["entropy_loss"], "train_loss": totals["train_loss"]})

    # ---- epochs ---------------------------------------------------------------------------------------

    def end_epoch(self, seconds: float) -> dict[str, Any]:
        """Derive the genotype and record the epoch; step the schedule; checkpoint."""
        self.flush_device_stats()
        self._check_state_finite()  # before anything of this epoch is written
        self._check_ranks_agree()
        diag, genotype = epoch_record(self.model, self.acc, self.steps, self.gap, self.cfg.max_skip)
        rec = {"epoch": self.epoch, "lr": self.w_opt.param_groups[0]["lr"], **diag, "seconds": seconds}
        self.history.append(rec)
        self.sched.step()
        if self.captured is not None:
            self.captured.recapture()  # the learning rate is a number the graph froze
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.acc = dict.fromkeys(TOTALS, 0.0)
        if self.recorder is not None:
            # checked finite and flushed above; the gap's passes leave the state as it was
            self.recorder.end_epoch(rec, genotype, self.history)
            self.recorder.save_checkpoint(self.state())
            log_epoch = getattr(self.recorder, "log_epoch", None)
            if log_epoch is not None:
                with torch.no_grad():
                    alpha = {t: p.detach().cpu().numpy() for t, p in self.model.softmax_entropy()[0].items()}
                log_epoch(self.epoch * self.steps, rec, genotype, alpha, self.steps)
        return rec

    def global_step(self) -> int:
        """Steps done since the search began (TensorBoard's step)."""
        return self.epoch * self.steps + self.step_in_epoch

    def _logs_this_step(self) -> bool:
        """Whether the step just done is logged: with ``--tensorboard``, every ``log_every`` steps, where this rank's
        recorder logs steps (rank 0's). Graph mode reads the step's statistics from the device only then."""
        logs = self.cfg.tensorboard and hasattr(self.recorder, "log_step")
        return logs and self.global_step() % self.cfg.log_every == 0

    def _log_step(self, stats: dict[str, float]) -> None:
        """Log a step's statistics (``_logs_this_step``)."""
        values = {f"step/{k}": stats[k] for k in ("a_loss", "val_loss", "train_loss", "entropy_loss")}
        values |= {"grad_norm/alpha": stats["alpha_grad_norm"], "grad_norm/weights": stats["weight_grad_norm"]}
        values |= {"lr/weights": self.w_opt.param_groups[0]["lr"], "lr/alpha": self.a_opt.param_groups[0]["lr"]}
        self.recorder.log_step(self.global_step(), values)  # type: ignore[union-attr]

    def _run_steps(self, sig: _Signals) -> None:
        """The rest of this epoch's steps, with a progress bar; a signal (on any rank) saves and stops the run."""
        cfg = self.cfg
        batches = zip(
            self.train_loader.batches(self.epoch, self.step_in_epoch),
            self.val_loader.batches(self.epoch, self.step_in_epoch),
        )
        desc = f"{cfg.alpha_mode} γ={cfg.gamma:g} epoch {self.epoch + 1}/{cfg.epochs}"
        bar = tqdm(
            total=self.steps,
            initial=self.step_in_epoch,
            desc=desc,
            disable=cfg.quiet,
            leave=False,
            unit="step",
            dynamic_ncols=True,
        )
        with bar:
            for (xt, yt), (xv, yv) in batches:
                if self.step_in_epoch >= self.steps:
                    break
                if self.captured is not None:
                    stats = self.graph_step(xt, yt, xv, yv)
                    self.step_in_epoch += 1
                    if self.step_in_epoch % 50 == 0:  # the only host synchronisations of graph mode
                        self.flush_device_stats()
                        bar.set_postfix(loss=f"{self.acc['train_loss'] / max(1, self.acc['n_train']):.3f}")
                    if self._logs_this_step():  # and, with --tensorboard, these
                        self._log_step(dict(zip(STEP_STATS, stats.tolist())))
                else:
                    out = self.train_step(xt, yt, xv, yv)
                    for k, v in zip(TOTALS, step_totals(out, len(yt), len(yv))):
                        self.acc[k] += v
                    self.step_in_epoch += 1
                    if self._logs_this_step():
                        self._log_step(out)
                    bar.set_postfix(loss=f"{out['train_loss']:.3f}", val=f"{out['val_loss']:.3f}", refresh=False)
                bar.update(1)
                if self.world_size > 1 and any_rank(sig.caught is not None, self.device) and not sig.caught:
                    sig.caught = "a signal on another rank"  # all ranks stop after the same step
                if sig.caught:
                    self._stop(sig.caught)

    def _stop(self, why: str) -> None:
        """Save the run and raise SearchInterrupted (every rank, after rank 0's checkpoint is written)."""
        self.save()
        if self.world_size > 1:
            barrier()  # no rank exits (which makes torchrun stop the others) before the checkpoint
        where = f"epoch {self.epoch} after step {self.step_in_epoch}"
        saved = f"{self.recorder.describe()}; continue with --resume" if self.recorder else "not saved (no run folder)"
        raise SearchInterrupted(f"{why} at {where}: {saved}")

    def run_epochs(self) -> SearchResult:
        """Run the remaining epochs; the final genotype, every epoch's record and the supernet."""
        cfg = self.cfg
        kept = lambda: self.recorder.describe() if self.recorder else "the run had no run folder"  # noqa: E731
        with _Signals() as sig, rank_loss_said(kept, (self.rank, self.world_size)):
            while self.epoch < cfg.epochs:
                t0 = time.time()
                self._run_steps(sig)
                rec = self.end_epoch(time.time() - t0)
                if not cfg.quiet:
                    skips = " ".join(f"{t}={n}" for t, n in rec["skip_connect"].items())
                    tqdm.write(
                        f"epoch {rec['epoch'] + 1}/{cfg.epochs}: train acc {rec['train_acc']:.3f} val acc "
                        f"{rec['val_acc']:.3f} gap {rec['gap']['gap']:+.3f} skip_connect {skips} ({rec['seconds']:.0f} s)"
                    )
        return SearchResult(genotype=self.model.genotype(max_skip=cfg.max_skip), history=self.history, model=self.model)
