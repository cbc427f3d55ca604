"""The fused custom ops against their plain-torch references: opcheck, float64 gradcheck, layouts, dtypes,
edge cases, torch.compile, and the reference fallback. CUDA results are compared under the cuda marker."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdarts_rs import ops
from mdarts_rs.ops import softmax_entropy_ref, weighted_sum_ref

from cudacompare import assert_cuda_matches_reference


@pytest.fixture(scope="module")
def ext():
    """The compiled CPU kernels (built on first use; about a minute)."""
    ops.load_extension(with_cuda=False)
    return torch.ops.mdarts


def inputs(shape, k, dtype=torch.float64, seed=0, grad=True, channels_last=False, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    xs = []
    for _ in range(k):
        x = torch.randn(shape if not noncontig else (*shape[:-1], shape[-1] * 2), generator=g, dtype=dtype)
        if noncontig:
            x = x[..., ::2]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        xs.append(x.requires_grad_(grad))
    w = torch.randn(k, generator=g, dtype=dtype).requires_grad_(grad)
    return xs, w


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("shape", "k", "layout"),
    [
        ((2, 3, 4, 5), 8, "plain"),
        ((2, 3, 4, 4), 1, "plain"),
        ((3, 4, 5, 5), 7, "channels_last"),
        ((2, 3, 4, 6), 3, "noncontig"),
        ((7,), 2, "plain"),
    ],
)
def test_weighted_sum_gradcheck_float64(ext, seed, shape, k, layout):
    xs, w = inputs(shape, k, seed=seed, channels_last=layout == "channels_last", noncontig=layout == "noncontig")
    assert torch.autograd.gradcheck(lambda w, *xs: ext.weighted_sum(list(xs), w), (w, *xs))
    torch.testing.assert_close(ext.weighted_sum(xs, w), weighted_sum_ref(xs, w), rtol=1e-12, atol=1e-12)


def test_weighted_sum_keeps_channels_last(ext):
    xs, w = inputs((2, 8, 4, 4), 3, dtype=torch.float32, grad=False, channels_last=True)
    out = ext.weighted_sum(xs, w)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, weighted_sum_ref(xs, w))


def test_weighted_sum_mixed_layouts_and_partial_grads(ext):
    xs, w = inputs((2, 3, 4, 4), 3, grad=False)
    xs[1] = xs[1].contiguous(memory_format=torch.channels_last)
    w.requires_grad_(True)  # weights need a gradient, inputs do not
    out = ext.weighted_sum(xs, w)
    torch.testing.assert_close(out, weighted_sum_ref(xs, w))
    (gw,) = torch.autograd.grad(out.square().sum(), w)
    (gw_ref,) = torch.autograd.grad(weighted_sum_ref(xs, w).square().sum(), w)
    torch.testing.assert_close(gw, gw_ref)
    xs2, w2 = inputs((2, 3), 4)
    w2.requires_grad_(False)  # inputs need gradients, weights do not
    assert torch.autograd.gradcheck(lambda *xs: ext.weighted_sum(list(xs), w2), tuple(xs2))


def test_weighted_sum_empty_tensors(ext):
    xs, w = inputs((0, 3, 4), 3)
    out = ext.weighted_sum(xs, w)
    assert out.shape == (0, 3, 4)
    gxs = torch.autograd.grad(out.sum(), [w, *xs])
    assert gxs[0].shape == (3,) and float(gxs[0].abs().sum()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_weighted_sum_low_precision_matches_reference(ext, dtype):
    xs, w = inputs((4, 16, 8, 8), 8, dtype=dtype, grad=False)
    ref = weighted_sum_ref([x.double() for x in xs], w.double())
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    torch.testing.assert_close(ext.weighted_sum(xs, w).double(), ref, rtol=tol, atol=tol * 4)


def test_weighted_sum_rejects_bad_arguments(ext):
    xs, w = inputs((2, 3), 3, grad=False)
    with pytest.raises(RuntimeError, match="3 inputs but 2 weights"):
        ext.weighted_sum(xs, w[:2])
    with pytest.raises(RuntimeError, match=r"xs\[1\] has shape"):
        ext.weighted_sum([xs[0], xs[1][:1], xs[2]], w)
    with pytest.raises(RuntimeError, match="at least one input"):
        ext.weighted_sum([], w[:0])
    with pytest.raises(RuntimeError, match="floating point"):
        ext.weighted_sum([torch.ones(2, dtype=torch.int64)], torch.ones(1, dtype=torch.int64))


# opcheck's own aot_dispatch test reads .grad of non-leaf tensors, which torch warns about.
OPCHECK_WARNING = pytest.mark.filterwarnings(
    "ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"
)


@OPCHECK_WARNING
@pytest.mark.parametrize("args", ["grad_both", "grad_w", "no_grad"])
def test_weighted_sum_opcheck(ext, args):
    xs, w = inputs((2, 3, 4, 4), 4, dtype=torch.float32, grad=args == "grad_both")
    w.requires_grad_(args != "no_grad")
    torch.library.opcheck(ext.weighted_sum.default, (xs, w))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(14, 8), (1, 1), (3, 5), (0, 8)])
def test_softmax_entropy_gradcheck_float64(ext, seed, shape):
    g = torch.Generator().manual_seed(seed)
    alpha = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).requires_grad_()
    assert torch.autograd.gradcheck(ext.softmax_entropy, (alpha,))
    p, h = ext.softmax_entropy(alpha)
    p_ref, h_ref = softmax_entropy_ref(alpha)
    torch.testing.assert_close(p, p_ref)
    torch.testing.assert_close(h, h_ref)


def test_softmax_entropy_noncontiguous_and_one_output_used(ext):
    alpha = torch.randn(8, 14, dtype=torch.float64).t().requires_grad_()  # (14, 8), not contiguous
    assert torch.autograd.gradcheck(lambda a: ext.softmax_entropy(a)[1], (alpha,))
    assert torch.autograd.gradcheck(lambda a: ext.softmax_entropy(a)[0], (alpha,))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=8, max_size=8), st.floats(0, 1e3))
def test_softmax_entropy_safe_for_large_alpha(ext, row, scale):
    alpha = (torch.tensor([row], dtype=torch.float32) * scale).requires_grad_()
    p, h = ext.softmax_entropy(alpha)
    p_ref, h_ref = softmax_entropy_ref(alpha.detach())
    assert torch.isfinite(p).all() and torch.isfinite(h).all()
    torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-5)
    (g,) = torch.autograd.grad(h.sum() + (p * torch.arange(8.0)).sum(), alpha)
    assert torch.isfinite(g).all()


@OPCHECK_WARNING
def test_softmax_entropy_opcheck(ext):
    torch.library.opcheck(ext.softmax_entropy.default, (torch.randn(14, 8, requires_grad=True),))
    torch.library.opcheck(ext.softmax_entropy.default, (torch.randn(3, 4),))


def test_ops_compile_with_fake_kernels(ext, monkeypatch):
    monkeypatch.setenv("MDARTS_OPS", "ext")
    xs, w = inputs((2, 3, 4, 4), 3, dtype=torch.float32)
    alpha = torch.randn(14, 8, requires_grad=True)

    def f(alpha, w, *xs):
        p, h = ops.softmax_entropy(alpha)
        return ops.weighted_sum(list(xs), w * p[0, :3]).sum() + h.sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    out = compiled(alpha, w, *xs)
    torch.testing.assert_close(out, f(alpha, w, *xs))
    out.backward()
    assert alpha.grad is not None and torch.isfinite(alpha.grad).all()


def test_ops_mode_switch(ext, monkeypatch):
    xs, w = inputs((2, 3), 2, dtype=torch.float32, grad=False)
    monkeypatch.setenv("MDARTS_OPS", "bogus")
    with pytest.raises(ValueError, match="MDARTS_OPS"):
        ops.weighted_sum(xs, w)
    monkeypatch.setenv("MDARTS_OPS", "ext")
    assert ops._use_extension(w)
    monkeypatch.setenv("MDARTS_OPS", "auto")
    assert not ops._use_extension(w)  # CPU tensors use the reference in auto mode
    monkeypatch.setenv("MDARTS_OPS", "ref")
    assert not ops._use_extension(w)


def test_ops_fall_back_with_one_warning_when_build_fails(monkeypatch):
    monkeypatch.setattr(ops, "_state", {"loaded": None, "cuda": False, "error": None})
    monkeypatch.setenv("MDARTS_OPS", "auto")

    def broken(*a, **k):
        raise OSError("no compiler")

    monkeypatch.setattr(ops, "load_extension", broken)
    xs, w = inputs((2, 3), 2, dtype=torch.float32, grad=False)
    fake_cuda = torch.empty(0, device="meta")
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda")), raising=False)
    with pytest.warns(RuntimeWarning, match="could not build the fused kernels .*no compiler"):
        assert not ops._use_extension(fake_cuda)
    monkeypatch.undo()
    assert fake_cuda.device.type == "meta"


def test_supernet_with_compiled_ops_matches_reference(ext, monkeypatch):
    from mdarts_rs.search.supernet import SuperNet

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    outs = {}
    for mode in ("ref", "ext"):
        monkeypatch.setenv("MDARTS_OPS", mode)
        m = SuperNet(C=4, layers=5, seed=0)
        loss = m(x).square().sum()
        loss.backward()
        outs[mode] = (loss.detach(), m.alphas.alpha_normal_mid.grad.clone(), m.stem[0].weight.grad.clone())
    # float32, two summation orders: elementwise differences up to ~1e-5 of each tensor's scale
    for a, b in zip(outs["ref"], outs["ext"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_weighted_sum_cuda_matches_cpu_reference(dtype, channels_last):
    ops.load_extension(with_cuda=True)
    xs, w = inputs((4, 16, 8, 8), 8, dtype=torch.float32, channels_last=channels_last)
    assert_cuda_matches_reference(torch.ops.mdarts.weighted_sum, weighted_sum_ref, xs, w, dtype, grad_atol=10)


@pytest.mark.cuda
@cuda
def test_softmax_entropy_cuda_matches_cpu_reference():
    ops.load_extension(with_cuda=True)
    alpha = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    ac = alpha.detach().cuda().requires_grad_()
    assert torch.autograd.gradcheck(torch.ops.mdarts.softmax_entropy, (ac,))
    p, h = torch.ops.mdarts.softmax_entropy(ac)
    p_ref, h_ref = softmax_entropy_ref(alpha)
    torch.testing.assert_close(p.cpu(), p_ref)
    torch.testing.assert_close(h.cpu(), h_ref)
