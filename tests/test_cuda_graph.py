"""Replayed CUDA graphs against eager calls, one level at a time: each compiled op (forward and backward), then the
batched supernet's α pass and weight pass (no optimizer). The whole search step is compared in test_search.py;
these tell which level a difference there comes from."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mdarts_rs import fastcell, ops
from mdarts_rs.search import entropy_loss
from mdarts_rs.supernet import SuperNet

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def replay_and_eager(fn, make_inputs):
    """``fn`` captured in a CUDA graph on static inputs (after two warm-up calls on a side stream), then replayed
    on fresh inputs copied into them; returns (replayed outputs, eager outputs of ``fn`` on the fresh inputs)."""
    static = make_inputs(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fn(*static)
    fresh = make_inputs(1)
    with torch.no_grad():
        for dst, src in zip(static, fresh):
            dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    replayed = [t.detach().clone() for t in captured]
    eager = [t.detach() for t in fn(*fresh)]
    return replayed, eager


def differences(replayed, eager, names, rtol: float = 0.0, atol: float = 0.0) -> list[str]:
    """The outputs that differ (bitwise by default, else beyond the tolerances), with their largest absolute
    difference and value."""
    out = []
    for name, a, b in zip(names, replayed, eager):
        same = torch.equal(a, b) if rtol == atol == 0 else torch.allclose(a, b, rtol=rtol, atol=atol)
        if not same:
            diff, size = float((a.double() - b.double()).abs().max()), float(b.double().abs().max())
            out.append(f"{name}: max abs diff {diff:.3e} (max abs {size:.3e})")
    return out


def leaf_inputs(shapes, seed, dtype=torch.float32):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(s, generator=g, device="cuda", dtype=dtype).requires_grad_() for s in shapes]


@pytest.mark.parametrize("relu, k, s, groups", [(False, 4, 3, 1), (False, 5, 2, 1), (False, 4, 3, 2), (True, 1, 0, 1)],
                         ids=["node", "reduction-node", "paired-inputs", "inner-bn-relu"])
@pytest.mark.parametrize("need_w", [True, False], ids=["alpha-pass", "weight-pass"])
def test_bn_mix_replayed_is_bitwise_eager(relu, k, s, groups, need_w):
    """bn_mix forward and backward (the α pass's gradients, or the weight pass's without the mixing weights')
    replayed from a graph equal the eager call on the same inputs, bit for bit: its kernels are deterministic."""
    ops.load_extension(with_cuda=True)
    b, n, c, hw = 8, 4, 16, (16, 16)
    shapes = [(b, n * c, *hw)] * k + [(b, groups * c, *hw)] * s

    def make(seed):
        ts = leaf_inputs(shapes, seed)
        w = torch.rand(n, s + k, generator=torch.Generator(device="cuda").manual_seed(seed + 7), device="cuda")
        return [*ts, w.requires_grad_(need_w)]

    def fn(*inputs):
        *ts, w = inputs
        out, mean, var = torch.ops.mdarts.bn_mix(ts[:k], ts[k:], w, 1e-5, relu)
        wrt = [*ts, w] if need_w else ts
        return [out, mean, var, *torch.autograd.grad(out.square().sum(), wrt)]

    replayed, eager = replay_and_eager(fn, make)
    names = ["out", "mean", "var", *(f"grad x{i}" for i in range(k)), *(f"grad shared{i}" for i in range(s)), "grad w"]
    assert not differences(replayed, eager, names), differences(replayed, eager, names)


@pytest.mark.parametrize("need_w", [True, False], ids=["weight-pass", "alpha-pass"])
def test_depthwise_replayed_is_bitwise_eager(need_w):
    ops.load_extension(with_cuda=True)

    def make(seed):
        x, w = leaf_inputs([(8, 16, 32, 32), (64, 1, 5, 5)], seed)
        return [x, w.requires_grad_(need_w)]

    def fn(x, w):
        out = torch.ops.mdarts.depthwise_conv(x, w, 1, 2, 1, True)
        return [out, *torch.autograd.grad(out.square().sum(), [x, w] if need_w else [x])]

    replayed, eager = replay_and_eager(fn, make)
    names = ["out", "grad x", "grad w"]
    assert not differences(replayed, eager, names), differences(replayed, eager, names)


def test_node_mix_replayed_is_bitwise_eager():
    ops.load_extension(with_cuda=True)
    shapes = [(8, 3, 4096), (8, 1, 4096), (8, 3, 4096)]

    def make(seed):
        return [*leaf_inputs(shapes, seed), leaf_inputs([(3, 3)], seed + 5)[0]]

    def fn(*inputs):
        *xs, w = inputs
        out = torch.ops.mdarts.node_mix(xs, w)
        return [out, *torch.autograd.grad(out.square().sum(), [*xs, w])]

    replayed, eager = replay_and_eager(fn, make)
    names = ["out", "grad x0", "grad x1", "grad x2", "grad w"]
    assert not differences(replayed, eager, names), differences(replayed, eager, names)


def supernet_passes(net: SuperNet):
    """``fn(xv, yv, xt, yt)``: the α pass's gradients (L_val + entropy, for α) and the weight pass's (L_train, for the
    weights, α fixed; zeros where a weight gets none) of ``net``; ``make(seed)``: a batch of each on the GPU;
    ``names``: the gradients' names."""
    alphas, weights = net.arch_parameters(), net.weight_parameters()

    def make(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        xv, xt = (torch.randn(8, 3, 32, 32, generator=g, device="cuda") for _ in range(2))
        yv, yt = (torch.randint(0, 10, (8,), generator=g, device="cuda") for _ in range(2))
        return [xv, yv, xt, yt]

    def fn(xv, yv, xt, yt):
        p, h = net.alphas()
        a_grads = torch.autograd.grad(F.cross_entropy(net(xv, p), yv) + entropy_loss(h, "sum"), alphas)
        with torch.no_grad():
            p, _ = net.alphas()
        w_grads = torch.autograd.grad(F.cross_entropy(net(xt, p), yt), weights, allow_unused=True)
        return [*a_grads, *(torch.zeros_like(q) if g is None else g for g, q in zip(w_grads, weights))]

    names = [f"α {t}" for t in net.layout.tables] + [n for n, q in net.named_parameters() if not n.startswith("alphas.")]
    return fn, make, names


@pytest.mark.parametrize("mix, depthwise, streams", [("torch", "torch", "one"), ("fused_bn", "torch", "one"), ("fused_bn", "fused", "one"),
                                                     ("fused", "torch", "one"), ("torch", "torch", "branches"),
                                                     ("fused_bn", "fused", "branches")])
def test_supernet_passes_replayed_match_eager(monkeypatch, mix, depthwise, streams):
    """The batched supernet's α pass (gradients of L_val + entropy for α) and weight pass (gradients of L_train for
    the weights, α fixed), replayed from one graph, agree with the eager passes on the same batch. Both use cuDNN's
    deterministic algorithms; a difference names the first parameters that differ and by how much, so that a
    mismatch of the whole search step (test_search.py) can be told apart from one in the optimizers. With side
    streams the graph holds the branches' streams (a capture fails unless they all join the caller's)."""
    monkeypatch.setitem(fastcell.OPTIONS, "mix", mix)
    monkeypatch.setitem(fastcell.OPTIONS, "depthwise", depthwise)
    monkeypatch.setitem(fastcell.OPTIONS, "streams", streams)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    fn, make, names = supernet_passes(SuperNet(C=8, layers=5, fast=True).cuda())
    replayed, eager = replay_and_eager(fn, make)
    assert len(replayed) == len(eager)
    bad = differences(replayed, eager, names, rtol=1e-5, atol=1e-7)
    assert not bad, f"{len(bad)} of {len(names)} gradients differ; first: {bad[:6]}"


@pytest.mark.parametrize("mix, depthwise", [("torch", "torch"), ("fused_bn", "fused")])
def test_side_streams_compute_the_single_stream_passes(monkeypatch, mix, depthwise):
    """A node's convolutions on side streams run the same kernels on the same inputs, and autograd accumulates
    gradients in the same order: the eager α and weight passes are bitwise those of one stream (same seed, same
    weights, same batch). Run twice, so that the second run's tensors reuse memory the first one freed on
    other streams (a missing stream record would let a stream overwrite memory another one still reads)."""
    monkeypatch.setitem(fastcell.OPTIONS, "mix", mix)
    monkeypatch.setitem(fastcell.OPTIONS, "depthwise", depthwise)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    results = {}
    for streams in ("one", "branches"):
        monkeypatch.setitem(fastcell.OPTIONS, "streams", streams)
        net = SuperNet(C=8, layers=5, fast=True).cuda()
        assert net.cells[0].nodes[0].side_streams == (streams == "branches")
        fn, make, names = supernet_passes(net)
        batch = make(0)
        results[streams] = [[t.clone() for t in fn(*batch)] for _ in range(2)]
    for run in range(2):
        bad = differences(results["branches"][run], results["one"][run], names)
        assert not bad, f"run {run}: {len(bad)} of {len(names)} gradients differ; first: {bad[:6]}"
