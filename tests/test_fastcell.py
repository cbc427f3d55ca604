"""The batched search cell computes the plain supernet's function, gradients and search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdarts_rs.config import SearchConfig
from mdarts_rs.fastcell import FastSearchCell, edge_id, readers
from mdarts_rs.primitives import count_params
from mdarts_rs.search import run_search
from mdarts_rs.supernet import SearchCell, SuperNet


def test_fastcell_reader_bookkeeping():
    assert [readers(j) for j in range(5)] == [[0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3], [2, 3], [3]]
    ids = sorted(edge_id(i, j) for j in range(5) for i in readers(j))
    assert ids == list(range(14))


@pytest.mark.parametrize("reduction", [False, True])
@pytest.mark.parametrize("reduction_prev", [False, True])
def test_fastcell_matches_plain_cell(reduction, reduction_prev):
    torch.manual_seed(0)
    plain = SearchCell(8 if reduction_prev else 6, 6, 4, reduction, reduction_prev)
    fast = FastSearchCell.from_plain(plain)
    s0 = torch.randn(3, 8 if reduction_prev else 6, 16 if reduction_prev else 8, 16 if reduction_prev else 8, dtype=torch.float64)
    s1 = torch.randn(3, 6, 8, 8, dtype=torch.float64)
    plain, fast = plain.double(), fast.double()
    p = torch.softmax(torch.randn(14, 8, dtype=torch.float64), -1).requires_grad_()
    a, b = plain(s0, s1, p), fast(s0, s1, p)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    ga = torch.autograd.grad(a.square().sum(), [p, *plain.preprocess1.parameters()], allow_unused=True)
    gb = torch.autograd.grad(b.square().sum(), [p, *fast.preprocess1.parameters()], allow_unused=True)
    for x, y in zip(ga, gb):
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)
    # Batch-norm statistics move the same way.
    plain_bn = plain.edges[0].ops[4][3].running_mean
    fast_bn = fast.nodes[0].sep_conv_3x3.bn[0].running_mean[: plain_bn.numel()]
    torch.testing.assert_close(plain_bn, fast_bn)


@pytest.mark.parametrize("mode", ["multilevel", "shared"])
def test_fast_supernet_same_weights_and_function(mode):
    plain, fast = SuperNet(C=4, layers=5, alpha_mode=mode, seed=2), SuperNet(C=4, layers=5, alpha_mode=mode, seed=2, fast=True)
    assert count_params(plain) == count_params(fast)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(plain(x), fast(x), rtol=1e-5, atol=1e-6)


def test_fast_search_follows_the_plain_search(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 64).astype(np.int64)
    results = {}
    for fast in (False, True):
        cfg = SearchConfig(out=tmp_path / str(fast), epochs=2, batch_size=4, init_channels=4, layers=5, steps_per_epoch=3, gap_images=8,
                           workers=1, quiet=True, plots=False, device="cpu", arch_lr=0.01, fast=fast)
        results[fast] = run_search(cfg, images, labels)
    plain, fast = results[False], results[True]
    assert plain.genotype == fast.genotype
    for t in plain.model.layout.tables:
        # The same search up to summation order. Adam turns rounding differences in small gradients into
        # differences of a fraction of its step, so after 6 steps of 0.01 α agrees to 2e-3 (README).
        a, b = plain.model.alphas.table(t), fast.model.alphas.table(t)
        moved = (a - SuperNet(C=4, layers=5, seed=0).alphas.table(t)).abs().max().item()
        assert moved > 0.03
        assert (a - b).abs().max().item() < 2e-3
    assert plain.history[-1]["train_loss"] == pytest.approx(fast.history[-1]["train_loss"], rel=1e-4)
