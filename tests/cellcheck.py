"""The batched cell built with a mixing implementation against the plain cell, for the fused ops' tests, and a
recorder of the ops a computation calls."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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


class RecordOps(TorchDispatchMode):
    """The aten and custom ops called while active, in order: ``names``, and ``args_of(name)`` the positional
    arguments of each call of one op."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self._args: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        self._args.append(args)
        return func(*args, **(kwargs or {}))

    def args_of(self, name: str) -> list[tuple]:
        return [a for n, a in zip(self.names, self._args) if n == name]
