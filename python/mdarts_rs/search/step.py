"""The search step: one α update on an S_val batch, then one weight update on an S_train batch (DARTS, Liu et al.
2019, section 2.3), with the α objective of multi-level DARTS, L_val + γ·L_entropy (Li, Chen, Sun 2021, eqs. 6-7).

``search_step`` is the only place where the update is computed, for every setting: the α gradient of first
order, of DARTS' second order (eqs. 6-8) or none (α warm-up), each batch split into chunks (micro-batches,
torchrun ranks) whose gradients are summed over chunks and ranks, then clipping and both optimizers' steps.
The eager loop calls it, and a CUDA graph captures it (``search.graph``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mdarts_rs.config import SearchConfig
from mdarts_rs.distributed import all_reduce_tensors_
from mdarts_rs.search.supernet import SuperNet, Weights

#: What one search step reports, in the order of the vector ``search_step`` returns.
STEP_STATS = (
    "a_loss",
    "val_loss",
    "train_loss",
    "entropy_loss",
    "val_correct",
    "train_correct",
    "alpha_grad_norm",
    "weight_grad_norm",
)


@dataclass
class StepParts:
    """What a search step reads and updates besides the batches: the supernet, its two optimizers, the settings,
    and this process's place among the ranks of one search (rank, world size). ``graph_safe``: the step is
    captured in a CUDA graph (autocast then keeps no cache of casts)."""

    model: SuperNet
    w_opt: torch.optim.Optimizer
    a_opt: torch.optim.Optimizer
    cfg: SearchConfig
    rank: int = 0
    world_size: int = 1
    graph_safe: bool = False

    @property
    def chunks(self) -> int:
        """The global batch is split into this many chunks; rank r computes chunks r·K .. r·K + K − 1."""
        return self.world_size * self.cfg.micro_batches

    def autocast(self) -> torch.autocast:
        """bfloat16 autocast of the network when ``cfg.bf16`` (α, its softmax and the losses stay float32)."""
        device_type = next(self.model.parameters()).device.type
        return torch.autocast(
            device_type, dtype=torch.bfloat16, enabled=self.cfg.bf16, cache_enabled=not self.graph_safe
        )


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


def arch_loss(
    parts: StepParts, x: torch.Tensor, y: torch.Tensor, params: dict[str, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_val + γ·L_entropy, L_val, L_entropy, logits) on (x, y), with the weights ``params`` in place of the
    network's own where given."""
    cfg, model = parts.cfg, parts.model
    p, h = model.softmax_entropy()
    e = model.edge_weights()
    with parts.autocast():
        if params is None:
            logits = model(x, p, edge_weights=e)
        else:
            logits = torch.func.functional_call(model, params, (x, p), {"edge_weights": e})
    loss_v = cross_entropy(logits, y)
    ent = entropy_loss(h, cfg.entropy_reduction)
    a_loss = loss_v + cfg.gamma * ent if cfg.gamma else loss_v
    return a_loss, loss_v, ent, logits


def unrolled_arch_gradients(
    parts: StepParts, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, fd_step: float = 0.01
) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """DARTS' second-order α gradient (Liu et al. 2019, eqs. 6-8) and the α loss at the unrolled weights.

    w' = w − ξ·(μ·m + ∇_w L_train(w, α) + λ·w), with ξ the weight learning rate, m the SGD momentum buffer
    (zero before the first weight step), μ the momentum and λ the weight decay; the gradient is
    ∇_α L_val(w', α) − ξ·(∇_α L_train(w⁺, α) − ∇_α L_train(w⁻, α)) / (2ε), with w± = w ± ε·∇_w' L_val(w', α)
    and ε = ``fd_step`` / ‖∇_w' L_val(w', α)‖ (DARTS: 0.01); γ·∇_α L_entropy is added directly. Every pass
    runs batch norm on its own batch's statistics and leaves the running statistics as they were."""
    cfg, model = parts.cfg, parts.model
    names, weights = zip(*[(n, q) for n, q in model.named_parameters() if not n.startswith("alphas.")])
    arch = model.arch_parameters()
    xi = parts.w_opt.param_groups[0]["lr"]

    def train_loss(params: dict[str, torch.Tensor] | None, p: Any, e: Any) -> torch.Tensor:
        with parts.autocast():
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
                buf = parts.w_opt.state.get(w, {}).get("momentum_buffer")
                step = w * cfg.weight_decay if g is None else g + w * cfg.weight_decay
                if buf is not None:
                    step = step + cfg.momentum * buf
                unrolled.append((w - xi * step).requires_grad_())
        losses = arch_loss(parts, xv, yv, dict(zip(names, unrolled)))
        grads = torch.autograd.grad(losses[0], [*arch, *unrolled], allow_unused=True)
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
    for d, gp, gm in zip(d_arch, *fd):
        hess = 0 if gp is None or gm is None else (gp - gm) / (2 * eps)
        out.append(d - xi * hess)
    return out, losses


def chunks_of(parts: StepParts, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """This process's chunks of a global batch, each with its share of the batch: the batch split into
    world size × micro_batches near-equal parts (sizes differ by one at most), rank r taking K consecutive ones."""
    n, k = parts.chunks, parts.cfg.micro_batches
    xs, ys = torch.tensor_split(x, n), torch.tensor_split(y, n)
    assert len(ys[-1]) > 0, f"a batch of {len(y)} images cannot be split into {n} chunks"
    return [(xs[i], ys[i], len(ys[i]) / len(y)) for i in range(parts.rank * k, (parts.rank + 1) * k)]


def _sum_over_ranks(parts: StepParts, tensors: list[torch.Tensor]) -> None:
    """Sum ``tensors`` over the ranks of this search in place (nothing in a search of one process)."""
    if parts.world_size > 1:
        all_reduce_tensors_(tensors)


def _alpha_update(
    parts: StepParts, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, update_alpha: bool
) -> torch.Tensor:
    """The α half of the step: each chunk's α gradient (first or second order) weighted by its share, summed over
    chunks and ranks, then Adam; without ``update_alpha`` (warm-up) the α loss is only evaluated. Returns this
    process's (a_loss, L_val, L_entropy) weighted by share and the correct count, and the α gradient's norm (over
    every table; 0 in the warm-up)."""
    alphas = parts.model.arch_parameters()
    a_grads = [torch.zeros_like(a) for a in alphas]
    rows = []
    for x, y, share in chunks_of(parts, xv, yv):
        if not update_alpha:
            with torch.no_grad():
                a_loss, loss_v, ent, logits = arch_loss(parts, x, y)
        else:
            if parts.cfg.order == 2:  # one chunk: the config refuses order 2 with micro-batches or ranks
                grads, (a_loss, loss_v, ent, logits) = unrolled_arch_gradients(parts, xt, yt, x, y)
            else:
                a_loss, loss_v, ent, logits = arch_loss(parts, x, y)
                grads = list(torch.autograd.grad(a_loss * share, alphas))
            for acc, g in zip(a_grads, grads):
                acc.add_(g)
        correct = (logits.argmax(1) == y).sum().to(loss_v.dtype)
        rows.append(torch.stack([a_loss.detach() * share, loss_v.detach() * share, ent.detach() * share, correct]))
    if update_alpha:
        _sum_over_ranks(parts, a_grads)
        for a, g in zip(alphas, a_grads):
            a.grad = g
        parts.a_opt.step()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in a_grads]))
    return torch.stack(rows).sum(0), norm


def _weight_update(parts: StepParts, xt: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
    """The weight half of the step, with the updated α held fixed (its softmax weights, without the entropies):
    each chunk's gradient weighted by its share, summed over chunks and ranks, clipped, then SGD. Returns this
    process's L_train weighted by share and the correct count, and the gradient's norm before clipping."""
    model = parts.model
    with torch.no_grad():
        p, _ = model.softmax_entropy()
        e = model.edge_weights()
    parts.w_opt.zero_grad(set_to_none=True)
    rows = []
    for x, y, share in chunks_of(parts, xt, yt):
        with parts.autocast():
            logits = model(x, p, edge_weights=e)
        loss = cross_entropy(logits, y)
        (loss * share).backward()
        rows.append(torch.stack([loss.detach() * share, (logits.argmax(1) == y).sum().to(loss.dtype)]))
    params = model.weight_parameters()
    # parameters without a gradient have none on every rank (the same network reads the same inputs)
    _sum_over_ranks(parts, [q.grad for q in params if q.grad is not None])
    norm = nn.utils.clip_grad_norm_(params, parts.cfg.grad_clip)
    parts.w_opt.step()
    return torch.stack(rows).sum(0), norm


def search_step(
    parts: StepParts,
    xt: torch.Tensor,
    yt: torch.Tensor,
    xv: torch.Tensor,
    yv: torch.Tensor,
    update_alpha: bool = True,
) -> torch.Tensor:
    """One search step: an α update on (xv, yv) (none with ``update_alpha`` False: α warm-up), then a weight
    update on (xt, yt). Without a host synchronisation, so that a CUDA graph can capture it.

    Returns the step's ``STEP_STATS`` as one vector on the device, alike on every rank: the losses are batch
    means (each chunk's weighted by its share), the correct counts are summed, the gradient norms are those of
    the whole batch's gradients (the weights' before clipping)."""
    val, alpha_norm = _alpha_update(parts, xt, yt, xv, yv, update_alpha)
    train, weight_norm = _weight_update(parts, xt, yt)
    # val: a_loss, L_val, L_entropy, val correct; train: L_train, train correct; in STEP_STATS' order (slices, no
    # index tensor to copy from the host)
    stats = torch.cat([val[:2], train[:1], val[2:], train[1:]])
    _sum_over_ranks(parts, [stats])  # the norms are of gradients summed over ranks already
    return torch.cat([stats, torch.stack([alpha_norm, weight_norm]).to(stats.dtype)])
