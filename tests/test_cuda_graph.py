"""Replayed CUDA graphs against eager calls below the whole search step: the batched supernet's α pass and
weight pass (no optimizer). The whole step is compared in test_search.py; this tells whether a difference
there comes from the network or from the optimizers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mdarts_rs.search import entropy_loss
from mdarts_rs.search.supernet import SuperNet

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
        p, h = net.softmax_entropy()
        a_grads = torch.autograd.grad(F.cross_entropy(net(xv, p), yv) + entropy_loss(h, "sum"), alphas)
        with torch.no_grad():
            p, _ = net.softmax_entropy()
        w_grads = torch.autograd.grad(F.cross_entropy(net(xt, p), yt), weights, allow_unused=True)
        return [*a_grads, *(torch.zeros_like(q) if g is None else g for g, q in zip(w_grads, weights))]

    names = [f"α {t}" for t in net.layout.tables] + [
        n for n, q in net.named_parameters() if not n.startswith("alphas.")
    ]
    return fn, make, names


def test_supernet_passes_replayed_match_eager(monkeypatch):
    """The batched supernet's α pass (gradients of L_val + entropy for α) and weight pass (gradients of L_train for
    the weights, α fixed), replayed from one graph, agree with the eager passes on the same batch. Both use cuDNN's
    deterministic algorithms; a difference names the first parameters that differ and by how much, so that a
    mismatch of the whole search step (test_search.py) can be told apart from one in the optimizers."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    fn, make, names = supernet_passes(SuperNet(C=8, layers=5, fast=True).cuda())
    replayed, eager = replay_and_eager(fn, make)
    assert len(replayed) == len(eager)
    bad = differences(replayed, eager, names, rtol=1e-5, atol=1e-7)
    assert not bad, f"{len(bad)} of {len(names)} gradients differ; first: {bad[:6]}"
