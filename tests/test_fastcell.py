"""The batched search cell computes the plain supernet's function, gradients and search."""

from __future__ import annotations

import dataclasses
import os
import signal

import numpy as np
import pytest
import torch

from mdarts_rs import fastcell, ops
from mdarts_rs.config import SearchConfig
from mdarts_rs.fastcell import FastSearchCell, edge_id, readers
from mdarts_rs.primitives import count_params
from mdarts_rs.search import Searcher, SearchInterrupted, run_search
from mdarts_rs.supernet import SearchCell, SuperNet


def test_fastcell_reader_bookkeeping():
    assert [readers(j) for j in range(5)] == [[0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3], [2, 3], [3]]
    ids = sorted(edge_id(i, j) for j in range(5) for i in readers(j))
    assert ids == list(range(14))


IMPLEMENTATIONS = [{"pointwise": pw, "batch_norm": bn, "mix": "torch"} for pw in ("grouped", "dense") for bn in ("native", "cudnn")]
IMPLEMENTATIONS += [{"pointwise": pw, "batch_norm": bn, "mix": "fused_bn"} for pw, bn in (("grouped", "native"), ("dense", "cudnn"))]
IMPLEMENTATIONS += [{"pointwise": "bmm", "batch_norm": "cudnn", "mix": mix} for mix in ("torch", "fused_bn")]
IMPLEMENTATIONS += [{"pointwise": pw, "batch_norm": bn, "mix": mix, "depthwise": "fused"}
                    for pw, bn, mix in (("grouped", "native", "torch"), ("dense", "cudnn", "fused_bn"), ("bmm", "cudnn", "fused_bn"))]
# the layout with one node op per cell input (the others pair them)
IMPLEMENTATIONS += [{"pointwise": pw, "batch_norm": "cudnn", "mix": mix, "depthwise": dw, "inputs": "separate"}
                    for pw, mix, dw in (("bmm", "torch", "torch"), ("dense", "fused_bn", "fused"), ("bmm", "fused_bn", "fused"))]
# side streams act on CUDA devices only: on the CPU the same single-stream computation (see test_cuda_graph.py)
IMPLEMENTATIONS += [{"pointwise": "bmm", "batch_norm": "cudnn", "mix": "fused_bn", "streams": "branches"}]


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda o: "-".join(o.values()))
def implementation(request, monkeypatch):
    for key, value in request.param.items():
        monkeypatch.setitem(fastcell.OPTIONS, key, value)
    if request.param.get("depthwise") == "fused":  # the compiled CPU kernels (ops.depthwise_conv's default there is torch's)
        ops.load_extension(with_cuda=False)
        monkeypatch.setenv("MDARTS_OPS", "ext")
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
                if branch.dense and branch.reads_node and b == 0:  # stored in c·n+e order
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
    assert fast.nodes[0].fused_bn == (implementation["mix"] == "fused_bn")
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
def test_fastcell_counts_batches_as_plain_cell(momentum, implementation):
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
    plain, fast = SuperNet(C=4, layers=5, alpha_mode=mode, seed=2), SuperNet(C=4, layers=5, alpha_mode=mode, seed=2, fast=True)
    assert count_params(plain) == count_params(fast)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(plain(x), fast(x), rtol=1e-5, atol=1e-6)


def _searchers(tmp_path, **kw) -> tuple[Searcher, Searcher]:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 64).astype(np.int64)
    pair = []
    for fast in (False, True):
        cfg = SearchConfig(out=tmp_path / str(fast), batch_size=4, init_channels=4, layers=5, gap_images=8, workers=1, quiet=True,
                           plots=False, device="cpu", fast=fast, **kw)
        pair.append(Searcher(cfg, images, labels))
    return pair[0], pair[1]


@pytest.mark.parametrize("mix", ["torch", "fused_bn"])
def test_fast_search_is_the_plain_search_in_float64(tmp_path, monkeypatch, mix):
    # Same seed, same batches, float64: the batched supernet makes the plain supernet's search, step for step
    # (with mix "fused_bn", through bn_mix's compiled CPU kernels).
    if mix == "fused_bn":
        ops.load_extension(with_cuda=False)
        monkeypatch.setenv("MDARTS_OPS", "ext")
    monkeypatch.setitem(fastcell.OPTIONS, "mix", mix)
    plain, fast = _searchers(tmp_path, arch_lr=0.01)
    assert fast.model.cells[0].nodes[0].fused_bn == (mix == "fused_bn")
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
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-5), key
    for x, y in zip(plain.model.arch_parameters(), fast.model.arch_parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_resume_refuses_batched_weights_of_another_layout(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 32).astype(np.int64)
    cfg = SearchConfig(out=tmp_path, batch_size=4, init_channels=4, layers=5, workers=1, quiet=True, plots=False, device="cpu",
                       gap_images=4, fast=True)
    monkeypatch.setitem(fastcell.OPTIONS, "pointwise", "grouped")
    state = Searcher(cfg, images, labels).state()
    assert state["fast_options"]["pointwise"] == "grouped"
    Searcher(cfg, images, labels).load_state(state)  # same layout: fine
    monkeypatch.setitem(fastcell.OPTIONS, "pointwise", "bmm")
    Searcher(cfg, images, labels).load_state(state)  # the grouped layout, multiplied another way: fine
    monkeypatch.setitem(fastcell.OPTIONS, "pointwise", "dense")
    with pytest.raises(ValueError, match="pointwise='grouped' weights and this run builds pointwise='dense'"):
        Searcher(cfg, images, labels).load_state(state)
    monkeypatch.setitem(fastcell.OPTIONS, "pointwise", "bmm")
    monkeypatch.setitem(fastcell.OPTIONS, "inputs", "separate")
    with pytest.raises(ValueError, match=r"inputs='paired' weights and this run builds inputs='separate'.*OPTIONS\['inputs'\] = 'paired'"):
        Searcher(cfg, images, labels).load_state(state)
    # a checkpoint from before the choice was recorded holds separate node ops, and resumes with them only
    old = {**state, "fast_options": {k: v for k, v in state["fast_options"].items() if k != "inputs"}}
    with pytest.raises(ValueError, match="inputs='separate' weights and this run builds inputs='paired'"):
        monkeypatch.setitem(fastcell.OPTIONS, "inputs", "paired")
        Searcher(cfg, images, labels).load_state(old)
    monkeypatch.setitem(fastcell.OPTIONS, "inputs", "separate")
    separate = Searcher(cfg, images, labels)
    separate.load_state({**separate.state(), "fast_options": old["fast_options"]})


def test_resumed_search_keeps_its_checkpoints_layout(tmp_path, monkeypatch):
    # A run written with another layout than this version's defaults (here: separate inputs and dense 1×1
    # convolutions), interrupted in its second epoch, resumes and finishes with its own layout.
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (48, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 48).astype(np.int64)
    cfg = SearchConfig(out=tmp_path, batch_size=4, init_channels=4, layers=5, workers=1, quiet=True, plots=False, device="cpu",
                       gap_images=4, fast=True, epochs=2, steps_per_epoch=2)
    monkeypatch.setitem(fastcell.OPTIONS, "inputs", "separate")
    monkeypatch.setitem(fastcell.OPTIONS, "pointwise", "dense")
    original, calls = Searcher.train_step, []

    def step_then_interrupt(self, *args):
        out = original(self, *args)
        calls.append(1)
        if len(calls) == 3:  # inside the second epoch
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Searcher, "train_step", step_then_interrupt)
    with pytest.raises(SearchInterrupted):
        run_search(cfg, images, labels)
    monkeypatch.setattr(Searcher, "train_step", original)
    monkeypatch.setitem(fastcell.OPTIONS, "inputs", "paired")
    monkeypatch.setitem(fastcell.OPTIONS, "pointwise", "bmm")
    resumed = run_search(dataclasses.replace(cfg, resume=True), images, labels)
    assert [r["epoch"] for r in resumed.history] == [0, 1]
    assert len(resumed.model.cells[0].nodes) == 5 and resumed.model.cells[0].nodes[0].sep_conv_3x3.dense
    saved = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 2 and (saved["fast_options"]["inputs"], saved["fast_options"]["pointwise"]) == ("separate", "dense")
    assert fastcell.OPTIONS["inputs"] == "paired" and fastcell.OPTIONS["pointwise"] == "bmm"  # restored after the build


def test_unknown_implementation_choice_is_an_error(monkeypatch):
    monkeypatch.setitem(fastcell.OPTIONS, "pointwise", "blockdiag")
    with pytest.raises(ValueError, match=r"OPTIONS\['pointwise'\] must be one of \('grouped', 'bmm', 'dense'\), got 'blockdiag'"):
        SuperNet(C=4, layers=5, fast=True)


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


def test_batch_norm_scale_may_be_strided_with_channels_last():
    # A folded scale can be a stride-0 view (an edge's weight expanded over its channels, when one edge reads
    # the node); torch's channels-last CPU batch-norm backward reads the weight as dense, so a strided one
    # gave wrong (even non-finite) input gradients and NaN searches with --fast --channels-last.
    torch.manual_seed(0)
    bn = fastcell.BatchNorm(16)
    scale = torch.rand(8)[3:4].expand(16)
    assert scale.stride() == (0,)
    x = torch.randn(4, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    g = torch.randn(4, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    grads = []
    for s in (scale, scale.contiguous()):
        xi = x.clone().requires_grad_()
        grads.append(torch.autograd.grad(bn(xi, s), xi, g)[0])
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("channels_last", [False, True])
def test_add_shared_gradients(channels_last):
    # The batched node's shared outputs (pooling, identity) added to every edge's sum with the edges' weights,
    # and the batched matrix products of its backward: float64 gradcheck, also with channels-last inputs.
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    mixed = torch.randn(3, 4, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 8, dtype=torch.float64)[:, 1:4].detach().requires_grad_()  # strided, as p's columns are
    shared = [torch.randn(3, 2, 5, 5, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_() for _ in range(3)]
    out = fastcell.AddShared.apply(mixed, w, *shared)
    expected = mixed + sum(w[:, k].view(1, 4, 1, 1, 1) * s.unsqueeze(1) for k, s in enumerate(shared))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(fastcell.AddShared.apply, (mixed, w, *shared))
    # only some inputs need gradients (the weight pass holds w fixed; a pooled output may be constant)
    w_fixed = w.detach()
    assert torch.autograd.gradcheck(fastcell.AddShared.apply, (mixed, w_fixed, shared[0], shared[1].detach(), shared[2]))
    assert torch.autograd.gradcheck(lambda w_: fastcell.AddShared.apply(mixed.detach(), w_, *(s.detach() for s in shared)), (w,))


@pytest.mark.parametrize("interleaved", [False, True])
def test_block_diagonal_weight(interleaved):
    # The dense 1×1 weight of n per-edge convolutions: a dense convolution with it is the n convolutions on
    # their edges' channels, and its backward hands each edge its own block of the gradient (gradcheck).
    torch.manual_seed(0)
    n, c = 3, 4
    pw = torch.randn(n * c, c, 1, 1, dtype=torch.float64, requires_grad=True)
    eye = torch.eye(n, dtype=torch.float64)
    x = torch.randn(2, n * c, 5, 5, dtype=torch.float64)  # channels e·C+c
    x_in = x.view(2, n, c, 5, 5).transpose(1, 2).reshape(2, n * c, 5, 5) if interleaved else x  # c·n+e if interleaved
    dense = torch.nn.functional.conv2d(x_in, fastcell.BlockDiagonal.apply(pw, eye, interleaved))
    grouped = torch.nn.functional.conv2d(x, pw, groups=n)
    torch.testing.assert_close(dense, grouped, rtol=0, atol=1e-13)
    assert torch.autograd.gradcheck(lambda w: fastcell.BlockDiagonal.apply(w, eye, interleaved), (pw,))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_stats_update_is_batch_norms(momentum):
    # mix "fused_bn" updates the running statistics of a cell's batch norms together, from bn_mix's batch
    # statistics: as nn.BatchNorm2d updates them, also for momentum None (a cumulative average).
    torch.manual_seed(0)
    xs = [torch.randn(4, 3, 5, 5) * 2 + 1, torch.randn(4, 3, 5, 5), torch.randn(4, 2, 2, 3) - 3]
    fast = [fastcell.BatchNorm(x.shape[1]) for x in xs]
    ref = [torch.nn.BatchNorm2d(x.shape[1], affine=False) for x in xs]
    for bn in fast + ref:
        bn.momentum = momentum
    for _ in range(3):
        updates = []
        for bns, group in ((fast[:2], xs[:2]), (fast[2:], xs[2:])):  # two nodes with different value counts
            mean = torch.stack([x.mean((0, 2, 3)) for x in group])
            var = torch.stack([x.var((0, 2, 3), correction=0) for x in group])
            updates.append((bns, mean, var, group[0].shape[0] * group[0].shape[2] * group[0].shape[3]))
        fastcell._update_running_stats(updates)
        for bn, x in zip(ref, xs):
            bn(x)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)
        assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 3


class FakeStreams:
    """torch.cuda's stream API emulated on the CPU: which stream is current, which streams each stream has
    waited for (up to which of their ops, transitively, as CUDA events order them) and which tensors are recorded
    on which streams. As a dispatch mode it checks each forward op against the two rules of cross-stream use:
    an op reads a tensor that another stream produced only after waiting for that op, and only if the tensor is
    recorded on its own stream (else the allocator may hand the memory to its producer's stream while it reads)."""

    class Stream:
        def __init__(self, name: str):
            self.name, self.ops, self.seen = name, 0, {}

        def wait_stream(self, other) -> None:
            for s, n in [*other.seen.items(), (other, other.ops)]:
                self.seen[s] = max(self.seen.get(s, 0), n)

    def __init__(self, monkeypatch):
        from contextlib import contextmanager

        self.main = self.current = self.Stream("main")
        self.created: list[FakeStreams.Stream] = []
        self.recorded: set[tuple[int, FakeStreams.Stream]] = set()
        self.violations: list[str] = []
        self.ops_on: dict[str, list[str]] = {}

        def new_stream(device=None):
            self.created.append(self.Stream(f"side {len(self.created)}"))
            return self.created[-1]

        @contextmanager
        def on(stream):
            saved, self.current = self.current, stream
            try:
                yield
            finally:
                self.current = saved

        monkeypatch.setattr(torch.cuda, "Stream", new_stream)
        monkeypatch.setattr(torch.cuda, "stream", on)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.current)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: self.recorded.add((t.untyped_storage().data_ptr(), s)))
        monkeypatch.setattr(fastcell, "_SIDE_STREAMS", {})
        monkeypatch.setattr(fastcell, "_side_streams", lambda h: fastcell._SideStreams(h.device))  # as on a CUDA device

    def checking(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        fake, produced = self, {}

        class Check(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                stream = fake.current
                stream.ops += 1
                name = func.overloadpacket.__name__
                fake.ops_on.setdefault(stream.name, []).append(name)
                for t in tree_flatten((args, kwargs))[0]:
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in produced:
                        key = t.untyped_storage().data_ptr()
                        src, index = produced[key]
                        if src is not stream and stream.seen.get(src, 0) < index:
                            fake.violations.append(f"{name} on {stream.name} reads a tensor of {src.name} without waiting")
                        if src is not stream and (key, stream) not in fake.recorded:
                            fake.violations.append(f"{name} on {stream.name} reads a tensor of {src.name} not recorded on it")
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() != 0:
                        produced[t.untyped_storage().data_ptr()] = (stream, stream.ops)
                return out

        return Check()


@pytest.mark.parametrize("mix", ["torch", "fused_bn"])
@pytest.mark.parametrize("reduction", [False, True])
def test_side_streams_order_and_record_every_cross_stream_tensor(monkeypatch, mix, reduction):
    """With streams "branches" (as on a CUDA device, its stream API emulated): the separable convolutions run on
    side streams 0 and 1, the dilated ones on side stream 2, the pooling on the caller's; every tensor that crosses
    streams in the cell's forward is read after its producer and recorded on the stream that reads it, and the
    caller's stream has waited for every side stream's last op when the cell returns; the output is the
    single-stream cell's. (The backward's streams are autograd's, tested on a GPU in test_cuda_graph.py.)"""
    monkeypatch.setitem(fastcell.OPTIONS, "mix", mix)
    torch.manual_seed(0)
    plain = SearchCell(6, 6, 4, reduction, False)
    single = FastSearchCell.from_plain(plain)
    monkeypatch.setitem(fastcell.OPTIONS, "streams", "branches")
    streamed = FastSearchCell.from_plain(plain)
    s0, s1 = torch.randn(2, 6, 8, 8), torch.randn(2, 6, 8, 8)
    p = torch.softmax(torch.randn(14, 8), -1).requires_grad_()
    expected = single(s0, s1, p)
    fake = FakeStreams(monkeypatch)
    with fake.checking():
        out = streamed(s0, s1, p)
    assert torch.equal(out, expected)
    assert not fake.violations, fake.violations[:5]
    assert len(fake.created) == 3, "three side streams, created once for all nodes"
    assert all(fake.main.seen.get(s, 0) == s.ops for s in fake.created), "the caller's stream waits for all side work"
    on, nodes = fake.ops_on, len(streamed.nodes)
    # a separable convolution: 2 depthwise convolutions and 2 matrix products; both dilated ones: 1 each
    assert on["side 0"].count("convolution") == on["side 1"].count("convolution") == on["side 2"].count("convolution") == 2 * nodes
    assert on["side 0"].count("bmm") == on["side 1"].count("bmm") == on["side 2"].count("bmm") == 2 * nodes
    if mix == "torch":  # its batch norms too (with fused_bn the last one runs in the caller's bn_mix)
        assert on["side 0"].count("native_batch_norm") == 2 * nodes and on["side 2"].count("native_batch_norm") == 2 * nodes
    assert "max_pool2d_with_indices" in on["main"] and "max_pool2d_with_indices" not in on["side 0"] + on["side 1"] + on["side 2"]
