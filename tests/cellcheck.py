"""The batched cell built with a mixing implementation against the plain cell, for the fused ops' tests."""

from __future__ import annotations

import torch

from mdarts_rs.fastcell import FastSearchCell
from mdarts_rs.supernet import SearchCell


def assert_fast_cell_matches_plain(reduction: bool) -> tuple[SearchCell, FastSearchCell]:
    """A plain cell and a batched cell with its weights (``fastcell.OPTIONS`` as the caller set them), in
    float64: the same output and α gradient. Returns both cells, after one forward and backward, for further
    checks."""
    torch.manual_seed(0)
    plain = SearchCell(6, 6, 4, reduction, False).double()
    fast = FastSearchCell.from_plain(plain).double()
    s0, s1 = torch.randn(3, 6, 8, 8, dtype=torch.float64), torch.randn(3, 6, 8, 8, dtype=torch.float64)
    p = torch.softmax(torch.randn(14, 8, dtype=torch.float64), -1).requires_grad_()
    a, b = plain(s0, s1, p), fast(s0, s1, p)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    (ga,), (gb,) = torch.autograd.grad(a.square().sum(), [p]), torch.autograd.grad(b.square().sum(), [p])
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-10)
    return plain, fast
