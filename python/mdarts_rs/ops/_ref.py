"""Plain-torch references of the fused ops: they are the specification, and the fallback when the
compiled extension is not available."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_sum_ref(xs: list[torch.Tensor] | tuple[torch.Tensor, ...], w: torch.Tensor) -> torch.Tensor:
    """Σ_k w[k]·xs[k] over K same-shaped tensors (the DARTS mixed op, Liu et al. 2019, eq. 1)."""
    assert len(xs) == w.shape[0] and w.dim() == 1, f"need one weight per input: {len(xs)} inputs, weights {tuple(w.shape)}"
    out = xs[0] * w[0]
    for k in range(1, len(xs)):
        out = out + xs[k] * w[k]
    return out


def node_mix_ref(xs: list[torch.Tensor] | tuple[torch.Tensor, ...], w: torch.Tensor) -> torch.Tensor:
    """The mixed sums of the n edges that read one node: out[b, e, r] = Σ_k w[e, k]·xs[k][b, e, r], where
    xs[k] is (B, n, R), one slice per edge, or (B, 1, R), shared by every edge; w is (n, K)."""
    assert w.dim() == 2 and len(xs) == w.shape[1], f"need w (edges, {len(xs)}), got {tuple(w.shape)}"
    cols = w.t().reshape(len(xs), 1, -1, 1)  # cols[k]: (1, n, 1)
    out = xs[0] * cols[0]
    for k in range(1, len(xs)):
        out = out + xs[k] * cols[k]
    return out


def bn_mix_ref(
    xs: list[torch.Tensor] | tuple[torch.Tensor, ...],
    shared: list[torch.Tensor] | tuple[torch.Tensor, ...],
    w: torch.Tensor,
    eps: float,
    relu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mixed outputs of the n edges that read one node, with the per-edge ops' last batch norms: S shared
    inputs (B, G·C, H, W) and K per-edge inputs xs[k] (B, n·C, H, W) (edge e owns channels e·C..e·C+C−1), w
    (n, S + K) with the shared inputs' columns first, and out[b, e·C+c] = Σ_s w[e, s]·shared[s][b, g·C+c] +
    Σ_k w[e, S+k]·(xs[k][b, e·C+c] − μ_k)/√(σ²_k + ε), a non-affine batch norm in training mode (batch mean
    μ_k and biased variance σ²_k of the channel); with ``relu``, max(out, 0). The shared inputs hold G ≥ 1
    groups of C channels (the nodes of a batched pair of nodes), and edge e reads group g = e·G // n (each
    group is read by n/G consecutive edges). Returns (out, μ, σ²), the statistics (K, n·C) as the running
    statistics' inputs (no gradient)."""
    n_shared = len(shared)
    assert w.dim() == 2 and w.shape[1] == n_shared + len(xs), f"need w (edges, {n_shared + len(xs)}), got {tuple(w.shape)}"
    n = w.shape[0]
    bsz, nc, height, width = xs[0].shape
    c = nc // n
    out = None
    for j, t in enumerate(shared):
        groups = t.shape[1] // c
        assert t.shape[1] == groups * c and n % groups == 0, f"shared[{j}] has {t.shape[1]} channels: not groups of {c} for {n} edges"
        per_edge = t.view(bsz, groups, 1, c, height, width).expand(bsz, groups, n // groups, c, height, width)
        term = (w[:, j].view(1, groups, n // groups, 1, 1, 1) * per_edge).reshape(bsz, nc, height, width)
        out = term if out is None else out + term
    means, variances = [], []
    for k, x in enumerate(xs):
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        scale = w[:, n_shared + k].repeat_interleave(c) * torch.rsqrt(var + eps)
        term = (x - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
        out = term if out is None else out + term
        means.append(mean.detach())
        variances.append(var.detach())
    assert out is not None
    return torch.relu(out) if relu else out, torch.stack(means), torch.stack(variances)


def softmax_entropy_ref(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row softmax p of α (E, K) and row entropy h = −Σ_k p·ln p (Li et al. 2021, eq. 6), shape (E,).

    Computed from log-softmax so that large |α| and p → 0 stay finite (p·ln p → 0).
    """
    assert alpha.dim() == 2, f"alpha must be (E, K), got {tuple(alpha.shape)}"
    logp = torch.log_softmax(alpha, dim=-1)
    p = logp.exp()
    return p, -(p * logp).sum(dim=-1)


def depthwise_conv_ref(
    x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, dilation: int, edge_major: bool = False
) -> torch.Tensor:
    """``depthwise_conv`` with torch's grouped conv2d (edge-major order through reordered weights and outputs)."""
    c = x.shape[1]
    if not edge_major:
        return F.conv2d(x, w, None, stride, padding, dilation, c)
    m, k = w.shape[0] // c, w.shape[2]
    interleaved = w.reshape(m, c, 1, k, k).transpose(0, 1).reshape(c * m, 1, k, k)
    out = F.conv2d(x, interleaved, None, stride, padding, dilation, c)
    return out.unflatten(1, (c, m)).transpose(1, 2).flatten(1, 2)
