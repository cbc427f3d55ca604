"""The search loop: first-order bilevel optimisation of DARTS (Liu et al. 2019, section 2.3, ξ = 0) with
the α objective of multi-level DARTS, L_val + γ·L_entropy (Li, Chen, Sun 2021, eqs. 6-7).

Each step makes one α update on an S_val batch (Adam), then one weight update on an S_train batch (SGD
with momentum, cosine learning rate, gradient clipping). After every epoch the genotype is derived in Rust
and the diagnostics the paper's argument rests on are logged: op counts per level (skip_connect above
all), mean edge entropy per table, and the gap between the supernet and the derived network.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mdarts_rs import _core
from mdarts_rs.config import SearchConfig, resume_conflicts
from mdarts_rs.data import CifarLoader, augment_images, search_split
from mdarts_rs.run import RunFolder
from mdarts_rs.supernet import SuperNet, Weights, one_hot_weights

#: torch.compile's backend for --compile (the tests trace with "aot_eager", which generates no code).
COMPILE_BACKEND = "inductor"

#: Config fields that may differ when resuming a run.
RESUMABLE_CHANGES = {"resume", "quiet", "plots", "device", "workers", "out", "data", "cuda_graph", "compile", "deterministic"}  # not "fast": weights differ in layout


class SearchDiverged(RuntimeError):
    """A loss or α became NaN or infinite; the last good checkpoint is kept."""


class SearchInterrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; the run was saved and can be resumed."""


@dataclass
class SearchResult:
    """What a finished search returns."""

    genotype: _core.Genotype | _core.MultiLevelGenotype
    history: list[dict[str, Any]]
    model: SuperNet


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def entropy_loss(h: Weights, reduction: str) -> torch.Tensor:
    """L_entropy = −Σ p·ln p over every edge of every table (eq. 6); ``mean`` divides by the edge count."""
    hs = torch.cat([v for v in h.values()])
    return hs.sum() if reduction == "sum" else hs.mean()


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Run BN layers on batch statistics without touching their running statistics (momentum 0)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.training, m.momentum) for m in bns]
    for m in bns:
        m.train()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, training, momentum in saved:
            m.train(training)
            m.momentum = momentum


@torch.no_grad()
def gap_accuracy(model: SuperNet, x: torch.Tensor, y: torch.Tensor, weights: Weights | None, sparse: bool, chunk: int = 256) -> float:
    """Top-1 accuracy on a fixed set, BN on batch statistics of each chunk."""
    correct = 0
    with batch_statistics(model):
        for i in range(0, len(y), chunk):
            logits = model(x[i : i + chunk], weights, sparse=sparse)
            correct += int((logits.argmax(1) == y[i : i + chunk]).sum())
    return correct / max(1, len(y))


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
    """One search run over in-memory CIFAR-10 training images."""

    def __init__(self, cfg: SearchConfig, images: np.ndarray, labels: np.ndarray, run: RunFolder | None = None):
        self.cfg = cfg
        self.run = run
        self.device = resolve_device(cfg.device)
        self.model = SuperNet(cfg.init_channels, 10, cfg.layers, cfg.alpha_mode, seed=cfg.seed, fast=cfg.fast).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        #: The network the steps call: the model itself, or with --compile its compiled forward (same parameters
        #: and state dict; evaluation and the gap call the model). Compiled on its first α pass and first weight
        #: pass, one graph each.
        self.net: nn.Module = self.model
        if cfg.compile:
            self.net = torch.compile(self.model, backend=COMPILE_BACKEND, dynamic=False)  # type: ignore[assignment]
            # torch's tracer reads the .grad of the op weights it is handed (non-leaf tensors) and warns about it
            warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf", UserWarning, r"torch(\.|$)")
            if not cfg.quiet:
                tqdm.write("--compile: the first step compiles the α pass and the weight pass (minutes)")
        if self.device.type == "cuda":
            # float32 semantics unless --tf32 (cuDNN's own default would run convolutions in TF32), and
            # cuDNN's autotuner for the fixed shapes of a search, as DARTS' code sets it, unless
            # --deterministic asks for cuDNN's deterministic algorithms (run-to-run identical results).
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
            torch.backends.cudnn.benchmark = not cfg.deterministic
            torch.backends.cudnn.deterministic = cfg.deterministic
        train_idx, val_idx = search_split(len(labels), cfg.portion, cfg.seed)
        common = dict(batch_size=cfg.batch_size, workers=cfg.workers, device=self.device, pin_memory=self.device.type == "cuda",
                      channels_last=cfg.channels_last)
        self.train_loader = CifarLoader(images, labels, train_idx, seed=cfg.seed, **common)  # type: ignore[arg-type]
        self.val_loader = CifarLoader(images, labels, val_idx, seed=cfg.seed + 1, **common)  # type: ignore[arg-type]
        if len(self.train_loader) == 0:
            raise ValueError(
                f"S_train has {self.train_loader.num_images} images, fewer than one batch of {cfg.batch_size}: "
                "raise --portion or lower --batch-size"
            )
        gap_idx = val_idx[: cfg.gap_images]
        self.gap_x = torch.from_numpy(augment_images(images[gap_idx], crop_padding=0, flip=False)).to(self.device)
        self.gap_y = torch.from_numpy(labels[gap_idx]).to(self.device)
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, cfg.epochs, eta_min=cfg.lr_min)
        self.use_graph = cfg.cuda_graph and self.device.type == "cuda"
        if cfg.cuda_graph and not self.use_graph:
            tqdm.write("--cuda-graph needs a CUDA device; running the steps eagerly")
        self.a_opt = torch.optim.Adam(self.model.arch_parameters(), cfg.arch_lr, betas=cfg.arch_betas,
                                      weight_decay=cfg.arch_weight_decay, capturable=self.use_graph)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_warmup = 0
        self._acc_dev: torch.Tensor | None = None  # graph mode: step statistics summed on the device
        self._neg_lr = torch.zeros((), device=self.device)  # graph mode: −lr, read by the captured update
        self.steps = len(self.train_loader) if cfg.steps_per_epoch is None else min(cfg.steps_per_epoch, len(self.train_loader))
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
        """Add (train loss·n, val loss·n, train correct, val correct, n train, n val, entropy loss) to the epoch."""
        for key, v in zip(self.TOTALS, values):
            self.acc[key] += v

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
            "fast_options": self.model.fast_options,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        resume_conflicts(SearchConfig.from_json(state["config"]).to_json(), self.cfg.to_json(), RESUMABLE_CHANGES)
        if self.cfg.fast:
            current = self.model.fast_options or {}
            for key, value in _layout_differences(state.get("fast_options"), current).items():
                raise ValueError(
                    f"cannot resume: the checkpoint's batched cells hold {key}={value!r} weights and this run "
                    f"builds {key}={current[key]!r} ones; set mdarts_rs.fastcell.OPTIONS[{key!r}] = {value!r} "
                    f"before resuming"
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
        self.flush_device_stats()
        if self.run is not None:
            self.run.save_checkpoint(self.state())

    # ---- one step -------------------------------------------------------------------------------------

    def _step_stats(self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
        """One α update on (xv, yv), then one weight update on (xt, yt), without host synchronisation.

        Returns (α loss, val loss, train loss, entropy loss, val correct, train correct) on the device."""
        cfg, model = self.cfg, self.model
        alphas = model.arch_parameters()
        # α step: gradients of L_val + γ·L_entropy with respect to α only (the weight gradients this
        # backward would also produce are never used, so autograd.grad skips them).
        p, h = model.alphas()
        with self._weights_frozen():
            with self._autocast():
                logits_v = self.net(xv, p)
            loss_v = F.cross_entropy(logits_v.float(), yv)
            ent = entropy_loss(h, cfg.entropy_reduction)
            a_loss = loss_v + cfg.gamma * ent if cfg.gamma else loss_v
            grads = torch.autograd.grad(a_loss, alphas)
        for a, g in zip(alphas, grads):
            a.grad = g
        self.a_opt.step()
        # Weight step with the updated α, held fixed.
        with torch.no_grad():
            p, _ = model.alphas()
        self.w_opt.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.net(xt, p)
        loss = F.cross_entropy(logits.float(), yt)
        loss.backward()
        params = model.weight_parameters()
        nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True if self.use_graph else None)
        if self.use_graph:
            self._sgd_step(params)
        else:
            self.w_opt.step()
        return torch.stack([
            a_loss.detach(), loss_v.detach(), loss.detach(), ent.detach(),
            (logits_v.argmax(1) == yv).sum().to(loss.dtype), (logits.argmax(1) == yt).sum().to(loss.dtype),
        ])

    def train_step(self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> dict[str, float]:
        """One α update on (xv, yv), then one weight update on (xt, yt); its statistics, checked finite."""
        # One host synchronisation for all step statistics.
        stats = self._step_stats(xt, yt, xv, yv).tolist()
        out = dict(zip(("a_loss", "val_loss", "train_loss", "entropy_loss", "val_correct", "train_correct"), stats))
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

    def _accumulate(self, stats: torch.Tensor, n_t: int, n_v: int) -> None:
        # The TOTALS of one step, on the device
        # torch.full launches a fill kernel; new_tensor would copy from the host at every step.
        nt, nv = (torch.full((), float(n), device=stats.device, dtype=stats.dtype) for n in (n_t, n_v))
        row = torch.stack([stats[2] * n_t, stats[1] * n_v, stats[5], stats[4], nt, nv, stats[3]])
        self._acc_dev = row if self._acc_dev is None else self._acc_dev + row

    def flush_device_stats(self) -> None:
        """Fold the statistics summed on the device into the epoch's totals and check they are finite."""
        if self._acc_dev is None:
            return
        totals = self._acc_dev.tolist()
        self._acc_dev = None
        self._add_totals(totals)
        tl, vl, ent = totals[0], totals[1], totals[6]
        self._check_finite({"a_loss": vl + ent, "train_loss": tl})

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

    @contextmanager
    def _weights_frozen(self) -> Iterator[None]:
        """With --compile, the α pass runs with the weights not requiring grad: a compiled backward computes the
        gradient of every input that requires one (torch.autograd.grad's choice of inputs reaches it too late),
        so the α pass would also compute every weight gradient. Eager passes skip them already."""
        if not self.cfg.compile:
            yield
            return
        weights = [q for q in self.model.weight_parameters() if q.requires_grad]
        for q in weights:
            q.requires_grad_(False)
        try:
            yield
        finally:
            for q in weights:
                q.requires_grad_(True)

    def _autocast(self) -> torch.autocast:
        """bfloat16 autocast of the network's forward when ``cfg.bf16`` (α, its softmax and the losses stay float32)."""
        # The autocast cache holds casts made during a CUDA-graph capture, so it is off in graph mode.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16, cache_enabled=not self.use_graph)

    def _check_finite(self, out: dict[str, float]) -> None:
        where = f"epoch {self.epoch} step {self.step_in_epoch}"
        for key in ("a_loss", "train_loss"):
            if not math.isfinite(out[key]):
                raise SearchDiverged(f"{where}: the {'α' if key == 'a_loss' else 'weight'} loss is {out[key]}; {self._kept()}")
        for name, a in zip(self.model.layout.tables, self.model.arch_parameters()):
            if not bool(torch.isfinite(a).all()):
                raise SearchDiverged(f"{where}: α table '{name}' holds NaN or infinite values; {self._kept()}")

    def _kept(self) -> str:
        if self.run is not None and self.run.checkpoint.exists():
            return f"the run stopped and the last good checkpoint is kept at {self.run.checkpoint}"
        return "the run stopped before its first checkpoint"

    # ---- one epoch ------------------------------------------------------------------------------------

    def end_epoch(self, seconds: float) -> dict[str, Any]:
        self.flush_device_stats()
        model = self.model
        genotype = model.genotype()
        with torch.no_grad():
            _, h = model.alphas()
        acc = self.acc
        sup = gap_accuracy(model, self.gap_x, self.gap_y, None, sparse=False)
        der = gap_accuracy(model, self.gap_x, self.gap_y, one_hot_weights(genotype, self.device), sparse=True)
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
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`"))
            self.sched.step()
        self.epoch += 1
        self.step_in_epoch = 0
        self.acc = self._zero_acc()
        if self.run is not None:
            self.run.write_genotype(genotype, rec["epoch"])
            self.run.write_metrics(self.history)
            self.save()
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
                    total=self.steps, initial=self.step_in_epoch, desc=f"{cfg.alpha_mode} γ={cfg.gamma:g} epoch {self.epoch + 1}/{cfg.epochs}",
                    disable=cfg.quiet, leave=False, unit="step", dynamic_ncols=True,
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
                        n_t, n_v = len(yt), len(yv)
                        self._add_totals((out["train_loss"] * n_t, out["val_loss"] * n_v, out["train_correct"],
                                          out["val_correct"], n_t, n_v, out["entropy_loss"]))
                        self.step_in_epoch += 1
                        bar.update(1)
                        bar.set_postfix(loss=f"{out['train_loss']:.3f}", val=f"{out['val_loss']:.3f}", refresh=False)
                    if sig.caught:
                        bar.close()
                        self.save()
                        where = f"epoch {self.epoch} after step {self.step_in_epoch}"
                        saved = f"saved to {self.run.checkpoint}; continue with --resume" if self.run else "not saved (no run folder)"
                        raise SearchInterrupted(f"{sig.caught} at {where}: {saved}")
                bar.close()
                rec = self.end_epoch(time.time() - t0)
                if not cfg.quiet:
                    skips = " ".join(f"{t}={n}" for t, n in rec["skip_connect"].items())
                    tqdm.write(
                        f"epoch {rec['epoch'] + 1}/{cfg.epochs}: train acc {rec['train_acc']:.3f} val acc {rec['val_acc']:.3f} "
                        f"gap {rec['gap']['gap']:+.3f} skip_connect {skips} ({rec['seconds']:.0f} s)"
                    )
        genotype = self.model.genotype()
        if self.run is not None:
            self.run.write_genotype(genotype)
        return SearchResult(genotype=genotype, history=self.history, model=self.model)


def _layout_choices(fast_options: dict[str, str] | None) -> dict[str, str]:
    """The ``fastcell.OPTIONS`` choices that set the batched cells' weight layout, as a checkpoint's recorded
    options hold them: the dense pointwise choice orders the depthwise weights differently ("grouped" and
    "bmm" store the same layout), and paired inputs hold one node op for both cell inputs. Checkpoints
    written before a choice was recorded hold grouped, separate ones."""
    options = {"pointwise": "grouped", "inputs": "separate", **(fast_options or {})}
    return {key: options[key] for key in ("pointwise", "inputs")}


def _layout_differences(fast_options: dict[str, str] | None, current: dict[str, str]) -> dict[str, str]:
    """The checkpoint's layout choices (from its recorded ``fast_options``) that build other weights than
    ``current``'s choices would."""

    def layout(key: str, value: str) -> str | bool:
        return value == "dense" if key == "pointwise" else value

    return {k: v for k, v in _layout_choices(fast_options).items() if layout(k, v) != layout(k, current[k])}


@contextmanager
def _checkpoint_layout(cfg: SearchConfig, state: dict[str, Any] | None) -> Iterator[None]:
    """While a resumed batched search builds its supernet: ``fastcell.OPTIONS`` set to the checkpoint's weight
    layout where this run's choices would build another one (a run resumes as it was written, whatever the
    defaults of this version)."""
    if not (cfg.fast and state is not None):
        yield
        return
    from mdarts_rs import fastcell

    adopted = _layout_differences(state.get("fast_options"), fastcell.OPTIONS)
    if adopted and not cfg.quiet:
        tqdm.write("resuming with the checkpoint's batched-cell layout: " + ", ".join(f"{k}={v!r}" for k, v in adopted.items()))
    with fastcell.options(adopted):
        yield


def run_search(cfg: SearchConfig, images: np.ndarray, labels: np.ndarray) -> SearchResult:
    """Run (or with ``cfg.resume`` continue) a search whose files go to ``cfg.out``. A resumed batched search
    keeps the weight layout of its checkpoint."""
    run = RunFolder(cfg.out)
    state = run.load_checkpoint() if cfg.resume else None
    with _checkpoint_layout(cfg, state):
        searcher = Searcher(cfg, images, labels, run)
    if state is not None:
        searcher.load_state(state)
    elif run.checkpoint.exists():
        raise FileExistsError(f"{run.checkpoint} exists: pass --resume to continue that run, or choose another --out")
    run.write_json("config.json", cfg.to_json())
    result = searcher.run_epochs()
    if cfg.plots:
        from mdarts_rs import plots

        plots.plot_search_run(run, result)
    return result
