"""The batched search cell computes the plain supernet's function, gradients and search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdarts_rs import edge_index
from mdarts_rs.config import SearchConfig
from mdarts_rs.primitives import count_params
from mdarts_rs.search import STEP_STATS, Searcher, fastcell
from mdarts_rs.search.fastcell import FastSearchCell, readers
from mdarts_rs.search.supernet import SearchCell, SuperNet


def test_fastcell_reader_bookkeeping():
    assert [readers(j) for j in range(5)] == [[0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3], [2, 3], [3]]
    ids = sorted(edge_index(i, j) for j in range(5) for i in readers(j))
    assert ids == list(range(14))


def conv_weight_grads(plain: SearchCell, fast: FastSearchCell) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(plain, fast) gradient pairs of every depthwise and pointwise weight, in the fast cell's order."""
    pairs = []
    for j, node in enumerate(fast.nodes):
        for name in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"):
            branch = getattr(node, name)
            mods = [plain.edges[e].ops[fastcell.OP[name]] for e in fast._edges[j]]
            for b in range(len(branch.dw)):
                pairs.append((torch.cat([m[4 * b + 1].weight.grad for m in mods]), branch.dw[b].grad))
                pairs.append((torch.cat([m[4 * b + 2].weight.grad for m in mods]), branch.pw[b].grad))
    return pairs


@pytest.mark.parametrize("reduction", [False, True])
@pytest.mark.parametrize("reduction_prev", [False, True])
def test_fastcell_matches_plain_cell(reduction, reduction_prev):
    torch.manual_seed(0)
    plain = SearchCell(8 if reduction_prev else 6, 6, 4, reduction, reduction_prev)
    fast = FastSearchCell.from_plain(plain)
    s0 = torch.randn(
        3, 8 if reduction_prev else 6, 16 if reduction_prev else 8, 16 if reduction_prev else 8, dtype=torch.float64
    )
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
    # Batch-norm statistics move the same way, those of the ops' last batch norms included.
    for b in (0, 1):
        for stat in ("running_mean", "running_var", "num_batches_tracked"):
            plain_bn = getattr(plain.edges[0].ops[4][4 * b + 3], stat)
            fast_bn = getattr(fast.nodes[0].sep_conv_3x3.bn[b], stat)
            torch.testing.assert_close(plain_bn, fast_bn[: plain_bn.numel()] if plain_bn.dim() else fast_bn)
    # In eval mode (running statistics) as well.
    plain.eval()
    fast.eval()
    torch.testing.assert_close(plain(s0, s1, p), fast(s0, s1, p), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_fastcell_counts_batches_as_plain_cell(momentum):
    # The cell counts its batch norms' training batches together (preprocessing included): after two training
    # forwards and an eval one, every batch norm has counted 2, as the plain cell's do, and the running
    # statistics agree (momentum None: a cumulative average, whose weight reads the count).
    torch.manual_seed(0)
    plain = SearchCell(6, 6, 4, True, False).double()
    fast = FastSearchCell.from_plain(plain).double()
    for m in [*plain.modules(), *fast.modules()]:
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = momentum
    s0, s1 = torch.randn(3, 6, 8, 8, dtype=torch.float64), torch.randn(3, 6, 8, 8, dtype=torch.float64)
    p = torch.softmax(torch.randn(14, 8, dtype=torch.float64), -1)
    for _ in range(2):
        plain(s0, s1, p), fast(s0, s1, p)
    plain.eval(), fast.eval()
    torch.testing.assert_close(plain(s0, s1, p), fast(s0, s1, p), rtol=1e-9, atol=1e-10)
    counts = {int(m.num_batches_tracked) for m in fast.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert counts == {int(m.num_batches_tracked) for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {2}
    assert all(isinstance(m, fastcell.BatchNorm) for m in fast.modules() if isinstance(m, torch.nn.BatchNorm2d))
    pre = fast.preprocess1[2]  # type: ignore[index]
    torch.testing.assert_close(pre.running_var, plain.preprocess1[2].running_var)  # type: ignore[index]


def test_fastcell_counts_batches_in_one_op():
    # one foreach op per cell forward for every batch norm's counter, none per batch norm
    from cellcheck import RecordOps

    fast = FastSearchCell.from_plain(SearchCell(6, 6, 4, False, False))
    with RecordOps() as seen:
        fast(torch.randn(2, 6, 8, 8), torch.randn(2, 6, 8, 8), torch.softmax(torch.randn(14, 8), -1))
    assert seen.names.count("_foreach_add_") == 1
    assert seen.names.count("add_") == 0


@pytest.mark.parametrize("mode", ["multilevel", "shared"])
def test_fast_supernet_same_weights_and_function(mode):
    plain, fast = (
        SuperNet(C=4, layers=5, alpha_mode=mode, seed=2),
        SuperNet(C=4, layers=5, alpha_mode=mode, seed=2, fast=True),
    )
    assert count_params(plain) == count_params(fast)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(plain(x), fast(x), rtol=1e-5, atol=1e-6)


def _searchers(tmp_path, **kw) -> tuple[Searcher, Searcher]:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 64).astype(np.int64)
    pair = []
    for fast in (False, True):
        cfg = SearchConfig(
            out=tmp_path / str(fast),
            batch_size=4,
            init_channels=4,
            layers=5,
            gap_images=8,
            workers=1,
            quiet=True,
            plots=False,
            device="cpu",
            supernet="batched" if fast else "plain",
            **kw,
        )
        pair.append(Searcher(cfg, images, labels))
    return pair[0], pair[1]


def test_fast_search_is_the_plain_search_in_float64(tmp_path):
    # Same seed, same batches, float64: the batched supernet makes the plain supernet's search, step for step.
    plain, fast = _searchers(tmp_path, arch_lr=0.01)
    start = [a.detach().clone() for a in plain.model.arch_parameters()]
    for s in (plain, fast):
        s.model.double()  # parameters keep their identity, so the optimizers follow
    batches = list(zip(plain.train_loader.batches(0), plain.val_loader.batches(0)))[:6]
    for (xt, yt), (xv, yv) in batches:
        a, b = (s.train_step(xt.double(), yt, xv.double(), yv) for s in (plain, fast))
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-10, abs=1e-12), key
    moved = max((a.float() - a0).abs().max().item() for a, a0 in zip(plain.model.arch_parameters(), start))
    assert moved > 0.05  # 6 Adam steps of 0.01
    for x, y in zip(plain.model.arch_parameters(), fast.model.arch_parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-10)
    assert plain.model.genotype() == fast.model.genotype()


def test_fast_search_step_matches_in_float32(tmp_path):
    # float32: one step agrees up to rounding. Over many steps Adam turns rounding differences of near-zero α
    # gradients into whole steps of opposite sign, in either path alike (README), so only one step is compared.
    plain, fast = _searchers(tmp_path)
    (xt, yt), (xv, yv) = next(iter(plain.train_loader)), next(iter(plain.val_loader))
    a, b = (s.train_step(xt, yt, xv, yv) for s in (plain, fast))
    for key in STEP_STATS[:6]:  # the losses and counts; the gradient norms are compared in float64 above
        assert a[key] == pytest.approx(b[key], rel=1e-5), key
    for x, y in zip(plain.model.arch_parameters(), fast.model.arch_parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_with_scale_is_torch_batch_norm_times_scale(momentum):
    # The batched cell's batch norm with a folded scale: nn.BatchNorm2d's output times the scale and its
    # running statistics, in training and in eval mode, also for momentum None (a cumulative average).
    torch.manual_seed(0)
    fast, ref = fastcell.BatchNorm(3), torch.nn.BatchNorm2d(3, affine=False)
    fast.momentum = ref.momentum = momentum
    scale = torch.tensor([0.5, 2.0, -1.0])
    for training in (True, True, False):
        x = torch.randn(4, 3, 5, 5)
        fast.train(training)
        ref.train(training)
        torch.testing.assert_close(fast(x, scale), ref(x) * scale.view(1, 3, 1, 1))
        torch.testing.assert_close(fast.running_mean, ref.running_mean)
        torch.testing.assert_close(fast.running_var, ref.running_var)


@pytest.mark.parametrize("groups", [1, 2])
def test_add_shared_gradients(groups):
    # The batched node's shared outputs (pooling, identity) added to every edge's sum with the edges' weights,
    # and the batched matrix products of its backward: float64 gradcheck, for one node and for two stacked.
    torch.manual_seed(0)
    mixed = torch.randn(3, 4, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 8, dtype=torch.float64)[:, 1:4].detach().requires_grad_()  # strided, as p's columns are
    shared = [torch.randn(3, groups * 2, 5, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    out = fastcell.AddShared.apply(mixed, w, *shared)
    # edge e reads group e // (4 / groups) of each shared output: (B, 4, 2, 5, 5) per output
    per_edge = [
        s.view(3, groups, 1, 2, 5, 5).expand(3, groups, 4 // groups, 2, 5, 5).reshape(3, 4, 2, 5, 5) for s in shared
    ]
    expected = mixed + sum(w[:, k].view(1, 4, 1, 1, 1) * s for k, s in enumerate(per_edge))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(fastcell.AddShared.apply, (mixed, w, *shared))
    # only some inputs need gradients (the weight pass holds w fixed; a pooled output may be constant)
    w_fixed = w.detach()
    assert torch.autograd.gradcheck(
        fastcell.AddShared.apply, (mixed, w_fixed, shared[0], shared[1].detach(), shared[2])
    )
    assert torch.autograd.gradcheck(
        lambda w_: fastcell.AddShared.apply(mixed.detach(), w_, *(s.detach() for s in shared)), (w,)
    )
