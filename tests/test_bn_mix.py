"""The fused batch norms and sums of a batched node's per-edge ops (``mdarts::bn_mix``) against their
plain-torch reference, and the batched cell and search built with them against the plain ones."""

from __future__ import annotations

import pytest
import torch

from mdarts_rs import fastcell, ops
from mdarts_rs.ops import bn_mix_ref
from cellcheck import assert_fast_cell_matches_plain


@pytest.fixture(scope="module")
def ext():
    """The compiled CPU kernels (built on first use; about a minute)."""
    ops.load_extension(with_cuda=False)
    return torch.ops.mdarts


def bn_inputs(b, n, c, hw, k, s=2, dtype=torch.float64, seed=0, grad=True, groups=1):
    """K per-edge inputs (B, n·C, H, W) away from zero mean and unit variance (as convolution outputs are), S
    shared inputs (B, groups·C, H, W), weights (n, S + K)."""
    g = torch.Generator().manual_seed(seed)
    xs = [(torch.randn(b, n * c, *hw, generator=g, dtype=dtype) * (0.5 + k_) + k_ - 1).requires_grad_(grad) for k_ in range(k)]
    shared = [torch.randn(b, groups * c, *hw, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(s)]
    w = torch.rand(n, s + k, generator=g, dtype=dtype).requires_grad_(grad)
    return xs, shared, w


def test_bn_mix_reference_is_weighted_batch_norms_plus_shared():
    xs, shared, w = bn_inputs(3, 2, 4, (5, 5), 3)
    out, mean, var = bn_mix_ref(xs, shared, w, 1e-5)
    bn = torch.nn.BatchNorm2d(8, affine=False, dtype=torch.float64)
    expected = sum(bn(x) * w[:, 2 + k].repeat_interleave(4).view(1, 8, 1, 1) for k, x in enumerate(xs))
    expected = expected + sum(torch.cat([w[e, j] * t for e in range(2)], dim=1) for j, t in enumerate(shared))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(mean[1], xs[1].mean((0, 2, 3)))
    torch.testing.assert_close(var[2], xs[2].var((0, 2, 3), correction=0))
    assert not mean.requires_grad and not var.requires_grad


def test_bn_mix_reference_with_groups_is_one_call_per_group():
    # Shared inputs of G groups (a batched pair of nodes): edges g·n/G .. (g+1)·n/G − 1 read group g, and the
    # batch norms of the per-edge inputs are per channel, so the op is the groups' calls side by side.
    xs, shared, w = bn_inputs(3, 6, 2, (4, 4), 2, 3, groups=3)
    out, mean, var = bn_mix_ref(xs, shared, w, 1e-5)
    for g in range(3):
        part = bn_mix_ref([x[:, 4 * g : 4 * g + 4] for x in xs], [t[:, 2 * g : 2 * g + 2] for t in shared], w[2 * g : 2 * g + 2], 1e-5)
        torch.testing.assert_close(out[:, 4 * g : 4 * g + 4], part[0])
        torch.testing.assert_close(mean[:, 4 * g : 4 * g + 4], part[1])
        torch.testing.assert_close(var[:, 4 * g : 4 * g + 4], part[2])


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(("n", "groups", "k", "s"), [(4, 2, 4, 3), (6, 3, 2, 1), (2, 2, 5, 2)])
def test_bn_mix_groups_gradcheck_float64(ext, n, groups, k, s, relu):
    xs, shared, w = bn_inputs(2, n, 2, (3, 4), k, s, seed=n, groups=groups)
    out, mean, var = ext.bn_mix(xs, shared, w, 1e-5, relu)
    ref_out, ref_mean, ref_var = bn_mix_ref(xs, shared, w, 1e-5, relu)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, ref_var, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda w, *t: ext.bn_mix(list(t[:k]), list(t[k:]), w, 1e-5, relu)[0], (w, *xs, *shared))
    w.requires_grad_(False)  # the weight pass: no weight gradient, the shared inputs' gradients per group
    assert torch.autograd.gradcheck(lambda *t: ext.bn_mix(list(t[:k]), list(t[k:]), w, 1e-5, relu)[0], (*xs, *shared))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("b", "n", "c", "hw", "k", "s"),
                         [(3, 2, 3, (4, 4), 4, 3), (2, 1, 2, (3, 5), 5, 2), (4, 4, 1, (2, 2), 1, 0), (1, 2, 2, (1, 3), 2, 1)])
def test_bn_mix_gradcheck_float64(ext, seed, b, n, c, hw, k, s):
    xs, shared, w = bn_inputs(b, n, c, hw, k, s, seed=seed)
    out, mean, var = ext.bn_mix(xs, shared, w, 1e-5, False)
    ref_out, ref_mean, ref_var = bn_mix_ref(xs, shared, w, 1e-5)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, ref_var, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda w, *t: ext.bn_mix(list(t[:k]), list(t[k:]), w, 1e-5, False)[0], (w, *xs, *shared))


@pytest.mark.parametrize(("k", "s"), [(1, 0), (2, 2)])
def test_bn_mix_relu_gradcheck_float64(ext, k, s):
    # With relu: max(out, 0), a batch norm followed by a ReLU (the batched separable convolutions' first block)
    xs, shared, w = bn_inputs(3, 2, 3, (4, 4), k, s, seed=3)
    out = ext.bn_mix(xs, shared, w, 1e-5, True)[0].detach()
    torch.testing.assert_close(out, bn_mix_ref(xs, shared, w, 1e-5, True)[0].detach(), rtol=1e-12, atol=1e-12)
    assert float(out.min()) == 0.0 and 0.2 < float((out > 0).double().mean()) < 0.8  # the ReLU cuts a part
    assert torch.autograd.gradcheck(lambda w, *t: ext.bn_mix(list(t[:k]), list(t[k:]), w, 1e-5, True)[0], (w, *xs, *shared))
    w.requires_grad_(False)  # without weight gradients the shared inputs are still read for the mask
    assert torch.autograd.gradcheck(lambda *t: ext.bn_mix(list(t[:k]), list(t[k:]), w, 1e-5, True)[0], (*xs, *shared))


def test_bn_mix_partial_grads_and_noncontiguous_inputs(ext):
    xs, shared, w = bn_inputs(3, 2, 3, (4, 4), 4, 3, grad=False)
    xs[2] = xs[2].contiguous(memory_format=torch.channels_last)  # same values, another memory layout
    shared[1] = shared[1].contiguous(memory_format=torch.channels_last)
    w.requires_grad_(True)
    g = torch.randn(3, 6, 4, 4, dtype=torch.float64)
    (gw,) = torch.autograd.grad(ext.bn_mix(xs, shared, w, 1e-5, False)[0], w, g)
    (gw_ref,) = torch.autograd.grad(bn_mix_ref(xs, shared, w, 1e-5)[0], w, g)
    torch.testing.assert_close(gw, gw_ref)
    # the weight pass: inputs need gradients, weights do not; one shared input is a constant
    xs2, shared2, w2 = bn_inputs(2, 2, 2, (3, 3), 3, 3)
    w2.requires_grad_(False)
    shared2[0].requires_grad_(False)
    assert torch.autograd.gradcheck(lambda *t: ext.bn_mix(list(t[:3]), [shared2[0], *t[3:]], w2, 1e-5, False)[0],
                                    (*xs2, *shared2[1:]))
    # only the shared inputs need gradients
    assert torch.autograd.gradcheck(lambda *t: ext.bn_mix([x.detach() for x in xs2], [shared2[0], *t], w2, 1e-5, False)[0],
                                    tuple(shared2[1:]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bn_mix_low_precision_matches_reference(ext, dtype):
    xs, shared, w = bn_inputs(4, 2, 8, (8, 8), 4, 3, dtype=torch.float32, grad=False)
    ref, ref_mean, _ = bn_mix_ref([x.double() for x in xs], [t.double() for t in shared], w.double(), 1e-5)
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    out, mean, var = ext.bn_mix([x.to(dtype) for x in xs], [t.to(dtype) for t in shared], w, 1e-5, False)
    assert out.dtype == dtype and mean.dtype == var.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * 4)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=tol, atol=tol)


def test_bn_mix_rejects_bad_arguments(ext):
    xs, shared, w = bn_inputs(2, 2, 3, (4, 4), 3, 2, grad=False)
    with pytest.raises(RuntimeError, match="2 shared and 3 per-edge inputs but w has 4 columns"):
        ext.bn_mix(xs, shared, w[:, :4], 1e-5, False)
    with pytest.raises(RuntimeError, match="6 channels do not split into 4 edges"):
        ext.bn_mix(xs, shared, torch.rand(4, 5, dtype=torch.float64), 1e-5, False)
    with pytest.raises(RuntimeError, match=r"xs\[1\] has shape"):
        ext.bn_mix([xs[0], xs[1][:, :, :2], xs[2]], shared, w, 1e-5, False)
    with pytest.raises(RuntimeError, match=r"shared\[1\] has shape \[2, 6, 4, 4\]; expected \(2, G\*3, 4, 4\) with the same G"):
        ext.bn_mix(xs, [shared[0], xs[0]], w, 1e-5, False)  # G = 2 where shared[0] has G = 1
    with pytest.raises(RuntimeError, match=r"shared\[0\] has shape \[2, 4, 4, 4\]; expected \(2, G\*3"):
        ext.bn_mix(xs, [torch.zeros(2, 4, 4, 4, dtype=torch.float64), shared[1]], w, 1e-5, False)  # not groups of 3
    with pytest.raises(RuntimeError, match=r"G dividing the 2 edges"):
        ext.bn_mix(xs, [torch.zeros(2, 9, 4, 4, dtype=torch.float64)] * 2, w, 1e-5, False)  # 3 groups for 2 edges
    with pytest.raises(RuntimeError, match="more than one value per channel"):
        ext.bn_mix([x[:1, :, :1, :1] for x in xs], [t[:1, :, :1, :1] for t in shared], w, 1e-5, False)
    with pytest.raises(RuntimeError, match="eps must be positive"):
        ext.bn_mix(xs, shared, w, 0.0, False)
    with pytest.raises(RuntimeError, match=r"must be \(batch, edges\*channels, height, width\)"):
        ext.bn_mix([x[0] for x in xs], shared, w, 1e-5, False)


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
@pytest.mark.parametrize("args", ["grad_all", "grad_inputs", "no_grad"])
def test_bn_mix_opcheck(ext, args):
    xs, shared, w = bn_inputs(2, 2, 3, (4, 4), 3, 2, dtype=torch.float32, grad=args != "no_grad")
    w.requires_grad_(args == "grad_all")
    torch.library.opcheck(ext.bn_mix.default, (xs, shared, w, 1e-5, False))
    torch.library.opcheck(ext.bn_mix.default, (xs, shared, w, 1e-5, True))


@pytest.mark.parametrize("reduction", [False, True])
def test_fast_cell_with_fused_bn_matches_plain_cell(ext, monkeypatch, reduction):
    """The batched cell with ``OPTIONS['mix'] = 'fused_bn'`` (compiled CPU kernels) computes the plain cell's
    output, α gradient and batch-norm statistics."""
    monkeypatch.setenv("MDARTS_OPS", "ext")
    monkeypatch.setitem(fastcell.OPTIONS, "mix", "fused_bn")
    plain, fast = assert_fast_cell_matches_plain(reduction)
    assert fast.nodes[0].fused_bn
    # the last batch norm of an op (with the node's sum) and a separable convolution's inner one (with a ReLU)
    for plain_bn, fast_bn in ((plain.edges[0].ops[fastcell.OP["dil_conv_5x5"]][3], fast.nodes[0].dil_conv_5x5.bn[0]),
                              (plain.edges[0].ops[fastcell.OP["sep_conv_3x3"]][3], fast.nodes[0].sep_conv_3x3.bn[0])):
        k = plain_bn.running_var.numel()
        torch.testing.assert_close(plain_bn.running_mean, fast_bn.running_mean[:k], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(plain_bn.running_var, fast_bn.running_var[:k], rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("b", "n", "c", "hw", "k", "s", "groups"),
                         [(64, 4, 16, (32, 32), 4, 3, 1), (64, 1, 64, (8, 8), 5, 2, 1), (3, 2, 3, (5, 5), 2, 1, 1), (4, 3, 2, (4, 4), 1, 0, 1),
                          (64, 8, 16, (32, 32), 4, 3, 2), (5, 6, 3, (4, 4), 2, 2, 3)])  # the last two: groups of shared inputs
def test_bn_mix_cuda_matches_cpu_reference(dtype, b, n, c, hw, k, s, groups):
    ops.load_extension(with_cuda=True)
    xs, shared, w = bn_inputs(b, n, c, hw, k, s, dtype=torch.float32, groups=groups)
    ref, ref_mean, ref_var = bn_mix_ref(xs, shared, w, 1e-5)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [w, *xs, *shared], g)
    xc = [x.detach().to("cuda", dtype).requires_grad_() for x in xs]
    sc = [t.detach().to("cuda", dtype).requires_grad_() for t in shared]
    wc = w.detach().cuda().requires_grad_()
    out, mean, var = torch.ops.mdarts.bn_mix(xc, sc, wc, 1e-5, False)
    grads = torch.autograd.grad(out, [wc, *xc, *sc], g.to("cuda", dtype))
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.float().cpu(), ref.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(mean.cpu(), ref_mean, rtol=tol, atol=tol)
    torch.testing.assert_close(var.cpu(), ref_var, rtol=tol, atol=tol)
    # grad_w sums up to B·H·W·C products: a larger absolute tolerance
    torch.testing.assert_close(grads[0].cpu(), ref_grads[0], rtol=tol, atol=tol * 100)
    for a, r in zip(grads[1:], ref_grads[1:]):
        torch.testing.assert_close(a.float().cpu(), r, rtol=tol, atol=tol)
