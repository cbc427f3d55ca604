"""The batched search cell computes the plain supernet's function, gradients and search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdarts_rs import fastcell
from mdarts_rs.config import SearchConfig
from mdarts_rs.fastcell import FastSearchCell, edge_id, readers
from mdarts_rs.primitives import count_params
from mdarts_rs.search import Searcher, run_search
from mdarts_rs.supernet import SearchCell, SuperNet


def test_fastcell_reader_bookkeeping():
    assert [readers(j) for j in range(5)] == [[0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3], [2, 3], [3]]
    ids = sorted(edge_id(i, j) for j in range(5) for i in readers(j))
    assert ids == list(range(14))


IMPLEMENTATIONS = [{"pointwise": pw, "batch_norm": bn} for pw in ("grouped", "dense") for bn in ("native", "cudnn")]


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda o: f"{o['pointwise']}-{o['batch_norm']}")
def implementation(request, monkeypatch):
    for key, value in request.param.items():
        monkeypatch.setitem(fastcell.OPTIONS, key, value)
    return request.param


def conv_weight_grads(plain: SearchCell, fast: FastSearchCell) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(plain, fast) gradient pairs of every depthwise and pointwise weight, in the fast cell's order."""
    pairs = []
    for j, node in enumerate(fast.nodes):
        for name in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"):
            branch = getattr(node, name)
            mods = [plain.edges[e].ops[fastcell.OP[name]] for e in fast._edges[j]]
            for b in range(len(branch.dw)):
                dw = torch.cat([m[4 * b + 1].weight.grad for m in mods])
                if branch.dense and b == 0:  # stored in c·n+e order
                    k = branch.kernel
                    dw = dw.view(branch.n, branch.c, 1, k, k).transpose(0, 1).reshape(-1, 1, k, k)
                pairs.append((dw, branch.dw[b].grad))
                pairs.append((torch.cat([m[4 * b + 2].weight.grad for m in mods]), branch.pw[b].grad))
    return pairs


@pytest.mark.parametrize("reduction", [False, True])
@pytest.mark.parametrize("reduction_prev", [False, True])
def test_fastcell_matches_plain_cell(reduction, reduction_prev, implementation):
    torch.manual_seed(0)
    plain = SearchCell(8 if reduction_prev else 6, 6, 4, reduction, reduction_prev)
    fast = FastSearchCell.from_plain(plain)
    assert fast.nodes[0].sep_conv_3x3.dense == (implementation["pointwise"] == "dense")
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
    plain(s0, s1, p).square().sum().backward()
    fast(s0, s1, p).square().sum().backward()
    for x, y in conv_weight_grads(plain, fast):
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


def test_resume_refuses_batched_weights_of_another_layout(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 32).astype(np.int64)
    cfg = SearchConfig(out=tmp_path, batch_size=4, init_channels=4, layers=5, workers=1, quiet=True, plots=False, device="cpu",
                       gap_images=4, fast=True)
    monkeypatch.setitem(fastcell.OPTIONS, "pointwise", "grouped")
    state = Searcher(cfg, images, labels).state()
    assert state["fast_options"]["pointwise"] == "grouped"
    Searcher(cfg, images, labels).load_state(state)  # same layout: fine
    monkeypatch.setitem(fastcell.OPTIONS, "pointwise", "dense")
    with pytest.raises(ValueError, match="pointwise='grouped' weights and this run builds pointwise='dense'"):
        Searcher(cfg, images, labels).load_state(state)


def test_unknown_implementation_choice_is_an_error(monkeypatch):
    monkeypatch.setitem(fastcell.OPTIONS, "pointwise", "blockdiag")
    with pytest.raises(ValueError, match=r"OPTIONS\['pointwise'\] must be one of \('grouped', 'dense'\), got 'blockdiag'"):
        SuperNet(C=4, layers=5, fast=True)
