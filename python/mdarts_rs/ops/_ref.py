"""Plain-torch references of the fused ops: they are the specification, and the fallback when the
compiled extension is not available."""

from __future__ import annotations

import torch


def weighted_sum_ref(xs: list[torch.Tensor] | tuple[torch.Tensor, ...], w: torch.Tensor) -> torch.Tensor:
    """Σ_k w[k]·xs[k] over K same-shaped tensors (the DARTS mixed op, Liu et al. 2019, eq. 1)."""
    assert len(xs) == w.shape[0] and w.dim() == 1, (
        f"need one weight per input: {len(xs)} inputs, weights {tuple(w.shape)}"
    )
    out = xs[0] * w[0]
    for k in range(1, len(xs)):
        out = out + xs[k] * w[k]
    return out


def softmax_entropy_ref(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row softmax p of α (E, K) and row entropy h = −Σ_k p·ln p (Li et al. 2021, eq. 6), shape (E,).

    Computed from log-softmax so that large |α| and p → 0 stay finite (p·ln p → 0).
    """
    assert alpha.dim() == 2, f"alpha must be (E, K), got {tuple(alpha.shape)}"
    logp = torch.log_softmax(alpha, dim=-1)
    p = logp.exp()
    return p, -(p * logp).sum(dim=-1)
