"""A compiled op on the GPU against its plain-torch reference on the CPU, output and every gradient."""

from __future__ import annotations

import torch


def assert_cuda_matches_reference(
    op, ref_fn, xs: list[torch.Tensor], w: torch.Tensor, dtype: torch.dtype, grad_atol: float
) -> None:
    """``op(xs, w)`` on CUDA in ``dtype`` against ``ref_fn(xs, w)`` on the CPU (float32 inputs). Tolerances:
    1e-5 for float32, 3e-2 for bfloat16; gradients also ``grad_atol`` times that absolutely."""
    ref = ref_fn(xs, w)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [w, *xs], g)
    xc = [x.detach().to("cuda", dtype).requires_grad_() for x in xs]
    wc = w.detach().cuda().requires_grad_()
    out = op(xc, wc)
    grads = torch.autograd.grad(out, [wc, *xc], g.to("cuda", dtype))
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float().cpu(), ref.detach(), rtol=tol, atol=tol)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.float().cpu(), b, rtol=tol, atol=tol * grad_atol)
