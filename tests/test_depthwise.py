"""The depthwise convolution with channel multiplier (``mdarts::depthwise_conv``) against torch's grouped
conv2d, and the batched cell built with it against the plain cell."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mdarts_rs import fastcell, ops
from cellcheck import RecordOps, assert_fast_cell_matches_plain


@pytest.fixture(scope="module")
def ext():
    """The compiled CPU kernels (built on first use; about a minute)."""
    ops.load_extension(with_cuda=False)
    return torch.ops.mdarts


# (B, C, H, W, multiplier, K, stride, padding, dilation): the search cell's convolutions (separable 3×3 and
# 5×5, dilated 3×3 and 5×5, reduction strides, second blocks without multiplier), odd sizes and strides, and
# planes too large for the zero-padded copies (the kernels' bounds-checked path).
CASES = [
    (2, 3, 8, 8, 4, 3, 1, 1, 1),
    (2, 3, 8, 8, 2, 5, 1, 2, 1),
    (2, 2, 8, 8, 3, 3, 2, 2, 2),
    (2, 2, 8, 8, 4, 5, 2, 4, 2),
    (3, 4, 7, 9, 1, 5, 1, 2, 1),
    (1, 2, 5, 6, 1, 3, 1, 2, 2),
    (2, 1, 7, 7, 2, 5, 2, 1, 1),
    (2, 2, 9, 6, 2, 5, 3, 3, 1),
    (2, 3, 4, 4, 2, 3, 1, 0, 1),
    (1, 1, 3, 3, 1, 3, 1, 0, 1),
    (1, 2, 80, 80, 1, 3, 1, 1, 1),
    (1, 1, 75, 75, 2, 5, 2, 4, 2),
]
IDS = ["-".join(map(str, c)) for c in CASES]


def inputs(b, c, h, w, m, k, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=dtype).requires_grad_()
    wt = torch.randn(c * m, 1, k, k, generator=g, dtype=dtype).requires_grad_()
    return x, wt


def test_edge_major_reference_is_the_grouped_conv2d_of_repeated_channels():
    x, wt = inputs(2, 3, 8, 8, 4, 3)
    torch.testing.assert_close(ops.depthwise_conv_ref(x, wt, 2, 2, 2, edge_major=True),
                               F.conv2d(x.repeat(1, 4, 1, 1), wt, None, 2, 2, 2, 12))


@pytest.mark.parametrize("edge_major", [False, True], ids=["interleaved", "edge_major"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_depthwise_matches_grouped_conv2d_float64(ext, case, edge_major):
    b, c, h, w, m, k, stride, padding, dilation = case
    x, wt = inputs(b, c, h, w, m, k)
    out = ext.depthwise_conv(x, wt, stride, padding, dilation, edge_major)
    ref = ops.depthwise_conv_ref(x, wt, stride, padding, dilation, edge_major)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, [x, wt], g), torch.autograd.grad(ref, [x, wt], g)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("edge_major", [False, True], ids=["interleaved", "edge_major"])
@pytest.mark.parametrize("case", CASES[:4] + CASES[6:8], ids=IDS[:4] + IDS[6:8])
def test_depthwise_gradcheck(ext, case, edge_major):
    b, c, h, w, m, k, stride, padding, dilation = case
    x, wt = inputs(1, c, min(h, 6), min(w, 6), m, k, seed=1)

    def conv(x, wt):
        return ext.depthwise_conv(x, wt, stride, padding, dilation, edge_major)

    assert torch.autograd.gradcheck(conv, (x, wt))


def test_depthwise_partial_gradients(ext):
    x, wt = inputs(2, 3, 6, 6, 2, 3)
    ref_x, ref_w = torch.autograd.grad(F.conv2d(x, wt, None, 1, 1, 1, 3).square().sum(), [x, wt])
    (gx,) = torch.autograd.grad(ext.depthwise_conv(x, wt.detach(), 1, 1, 1, False).square().sum(), [x])
    (gw,) = torch.autograd.grad(ext.depthwise_conv(x.detach(), wt, 1, 1, 1, False).square().sum(), [wt])
    torch.testing.assert_close(gx, ref_x)
    torch.testing.assert_close(gw, ref_w)
    gx_only, gw_empty = ext.depthwise_conv_backward(torch.ones(2, 6, 6, 6, dtype=torch.float64), x, wt, 1, 1, 1, False, True, False)
    assert gx_only.shape == x.shape and gw_empty.numel() == 0


def backward_flags(seen: RecordOps) -> list[tuple[bool, bool]]:
    """The (need_x, need_w) flags of every depthwise_conv_backward call ``seen`` recorded."""
    return [(bool(a[-2]), bool(a[-1])) for a in seen.args_of("depthwise_conv_backward")]


@pytest.mark.parametrize("wanted, flags", [("x0", [(True, False)]), ("w", [(False, True)]), ("scale", []),
                                           ("all", [(True, True)])])
def test_depthwise_backward_computes_only_the_gradients_the_pass_uses(ext, wanted, flags):
    """Inputs that require grad but whose gradient the running backward does not use (torch.autograd.grad for
    other inputs, as a first-order α step asks for α alone) get none: the kernel is told not to compute it, as
    torch's convolutions skip theirs, and with none wanted it does not run."""
    x0, wt = inputs(2, 3, 6, 6, 2, 3)
    scale = torch.randn(6, dtype=torch.float64, requires_grad=True)
    x = torch.relu(x0)  # a non-leaf input, as in a cell
    loss = (ext.depthwise_conv(x, wt, 1, 1, 1, False) * scale.view(1, 6, 1, 1)).square().sum()
    ref = dict(zip(("x0", "w", "scale"), torch.autograd.grad(
        (F.conv2d(torch.relu(x0), wt, None, 1, 1, 1, 3) * scale.view(1, 6, 1, 1)).square().sum(), [x0, wt, scale])))
    with RecordOps() as seen:
        if wanted == "all":
            loss.backward()
            got = {"x0": x0.grad, "w": wt.grad, "scale": scale.grad}
        else:
            got = dict(zip([wanted], torch.autograd.grad(loss, [{"x0": x0, "w": wt, "scale": scale}[wanted]])))
    assert backward_flags(seen) == flags
    for name, grad in got.items():
        torch.testing.assert_close(grad, ref[name])


def test_depthwise_strided_inputs(ext):
    """Channels-last and transposed inputs give the contiguous input's result (read through a copy)."""
    x, wt = inputs(2, 3, 6, 8, 2, 3)
    ref = ext.depthwise_conv(x, wt, 1, 1, 1, False)
    torch.testing.assert_close(ext.depthwise_conv(x.to(memory_format=torch.channels_last), wt, 1, 1, 1, False), ref)
    xt = x.detach().transpose(2, 3).contiguous().transpose(2, 3)
    torch.testing.assert_close(ext.depthwise_conv(xt, wt, 1, 1, 1, False), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_depthwise_low_precision(ext, dtype):
    """float32 and bfloat16 inputs (float32 weights, float32 accumulation) against float64."""
    x, wt = inputs(2, 4, 8, 8, 3, 5)
    ref = F.conv2d(x, wt, None, 2, 4, 2, 4)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x, wt], g)
    xl, wl = x.detach().to(dtype).requires_grad_(), wt.detach().float().requires_grad_()
    out = ext.depthwise_conv(xl, wl, 2, 4, 2, False)
    assert out.dtype == dtype
    gx, gw = torch.autograd.grad(out, [xl, wl], g.to(dtype))
    assert gx.dtype == dtype and gw.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.double(), ref.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(gx.double(), ref_grads[0], rtol=tol, atol=tol)
    torch.testing.assert_close(gw.double(), ref_grads[1], rtol=tol, atol=tol * 10)


def test_depthwise_argument_errors(ext):
    x, wt = inputs(2, 3, 6, 6, 2, 3)
    with pytest.raises(RuntimeError, match="x must be"):
        ext.depthwise_conv(x[0], wt, 1, 1, 1, False)
    with pytest.raises(RuntimeError, match="w must be"):
        ext.depthwise_conv(x, wt[:, :, :2], 1, 1, 1, False)
    with pytest.raises(RuntimeError, match="not a multiple of x's 3 channels"):
        ext.depthwise_conv(x, wt[:5], 1, 1, 1, False)
    with pytest.raises(RuntimeError, match="stride must be at least 1"):
        ext.depthwise_conv(x, wt, 0, 1, 1, False)
    with pytest.raises(RuntimeError, match="padding must not be negative"):
        ext.depthwise_conv(x, wt, 1, -1, 1, False)
    with pytest.raises(RuntimeError, match="dilation must be at least 1"):
        ext.depthwise_conv(x, wt, 1, 1, 0, False)
    with pytest.raises(RuntimeError, match="smaller than the dilated"):
        ext.depthwise_conv(x[:, :, :2, :2], wt, 1, 0, 2, False)
    with pytest.raises(RuntimeError, match=r"kernel size 7 is not built \(3 or 5\)"):
        ext.depthwise_conv(x, torch.zeros(6, 1, 7, 7, dtype=torch.float64), 1, 3, 1, False)
    with pytest.raises(RuntimeError, match="x must be floating point"):
        ext.depthwise_conv(x.long(), wt, 1, 1, 1, False)
    with pytest.raises(RuntimeError, match="grad has shape"):
        ext.depthwise_conv_backward(torch.zeros(2, 6, 5, 5, dtype=torch.float64), x, wt, 1, 1, 1, False, True, True)


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
@pytest.mark.parametrize("grads", ["both", "x", "w", "none"])
def test_depthwise_opcheck(ext, grads):
    x, wt = inputs(2, 3, 8, 8, 2, 5, dtype=torch.float32)
    x.requires_grad_(grads in ("both", "x"))
    wt.requires_grad_(grads in ("both", "w"))
    torch.library.opcheck(ext.depthwise_conv.default, (x, wt, 1, 2, 1, False))
    torch.library.opcheck(ext.depthwise_conv.default, (x, wt, 2, 4, 2, True))


def test_depthwise_wrapper_without_the_extension(monkeypatch):
    """ops.depthwise_conv without the compiled ops is the reference, torch's grouped conv2d."""
    monkeypatch.setenv("MDARTS_OPS", "ref")
    x, wt = inputs(2, 3, 8, 8, 2, 3)
    torch.testing.assert_close(ops.depthwise_conv(x, wt, 2, 1, 1), F.conv2d(x, wt, None, 2, 1, 1, 3))
    torch.testing.assert_close(ops.depthwise_conv(x, wt, 2, 1, 1, edge_major=True), F.conv2d(x.repeat(1, 2, 1, 1), wt, None, 2, 1, 1, 6))


def test_depthwise_wrapper_runs_unbuilt_kernel_sizes_as_the_reference(ext, monkeypatch):
    monkeypatch.setenv("MDARTS_OPS", "ext")
    x, wt = inputs(2, 3, 8, 8, 2, 7)
    torch.testing.assert_close(ops.depthwise_conv(x, wt, 1, 3, 1), F.conv2d(x, wt, None, 1, 3, 1, 3))


@pytest.mark.parametrize("reduction", [False, True])
def test_fast_cell_with_fused_depthwise_matches_plain_cell(ext, monkeypatch, reduction):
    """The batched cell with ``OPTIONS['depthwise'] = 'fused'`` (compiled CPU kernels) computes the plain cell's
    output and α gradient."""
    monkeypatch.setenv("MDARTS_OPS", "ext")
    monkeypatch.setitem(fastcell.OPTIONS, "depthwise", "fused")
    _, fast = assert_fast_cell_matches_plain(reduction)
    assert fast.nodes[0].sep_conv_3x3.fused_depthwise


def test_fused_depthwise_alpha_pass_skips_weight_gradients(ext, monkeypatch):
    """In the batched supernet with fused depthwise convolutions, the α pass (gradients for α only) computes no
    depthwise weight gradient, and the weight pass computes every one."""
    from mdarts_rs.supernet import SuperNet

    monkeypatch.setenv("MDARTS_OPS", "ext")
    monkeypatch.setitem(fastcell.OPTIONS, "depthwise", "fused")
    net = SuperNet(C=4, layers=5, fast=True)
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 7])
    dws = sum(len(m.dw) for m in net.modules() if isinstance(m, fastcell.GroupedConvBranch))
    p, _ = net.alphas()
    with RecordOps() as alpha_pass:
        grads = torch.autograd.grad(F.cross_entropy(net(x, p), y), net.arch_parameters())
    assert all(g.abs().sum() > 0 for g in grads)
    alpha_flags = backward_flags(alpha_pass)
    assert len(alpha_flags) > 0 and not any(need_w for _, need_w in alpha_flags)
    with RecordOps() as weight_pass:
        F.cross_entropy(net(x, {t: w.detach() for t, w in p.items()}), y).backward()
    weight_flags = backward_flags(weight_pass)
    assert len(weight_flags) == dws and all(need_w for _, need_w in weight_flags)


# The search cell's shapes at batch 64 (level 1 with multiplier 4, a reduction edge, level 3), then planes too
# large for the shared-memory kernels and small odd ones.
CUDA_CASES = [
    (64, 16, 32, 32, 4, 5, 1, 2, 1),
    (64, 64, 32, 32, 1, 3, 1, 1, 1),
    (64, 16, 32, 32, 4, 5, 2, 4, 2),
    (64, 64, 8, 8, 4, 3, 1, 2, 2),
    (2, 3, 120, 120, 1, 3, 1, 1, 1),
    (2, 2, 100, 100, 3, 5, 2, 2, 1),
    (3, 2, 7, 9, 2, 5, 3, 3, 1),
    (2, 3, 5, 5, 2, 3, 1, 0, 1),
]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CUDA_CASES, ids=["-".join(map(str, c)) for c in CUDA_CASES])
def test_depthwise_cuda_matches_conv2d(case, dtype):
    ops.load_extension(with_cuda=True)
    b, c, h, w, m, k, stride, padding, dilation = case
    edge_major = dtype == torch.float32 and m > 1  # each order on some of the cases
    x, wt = inputs(b, c, h, w, m, k)
    ref = ops.depthwise_conv_ref(x, wt, stride, padding, dilation, edge_major)
    g = torch.randn_like(ref)
    ref_x, ref_w = torch.autograd.grad(ref, [x, wt], g)
    xc, wc = x.detach().to("cuda", dtype).requires_grad_(), wt.detach().to("cuda", torch.float32).requires_grad_()
    out = torch.ops.mdarts.depthwise_conv(xc, wc, stride, padding, dilation, edge_major)
    gx, gw = torch.autograd.grad(out, [xc, wc], g.to("cuda", dtype))
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.double().cpu(), ref.detach(), rtol=tol, atol=tol)
    # bf16 g and x: each input gradient sums m·K² rounded products, so relative to the gradient's scale
    scale_x = 1.0 if dtype == torch.float32 else ref_x.abs().max().item() / 10
    torch.testing.assert_close(gx.double().cpu(), ref_x, rtol=tol, atol=tol * scale_x)
    # grad_w sums up to B·Ho·Wo products: relative to its scale
    scale = ref_w.abs().max().item()
    torch.testing.assert_close(gw.double().cpu(), ref_w, rtol=tol, atol=tol * scale)
    again = torch.autograd.grad(torch.ops.mdarts.depthwise_conv(xc, wc, stride, padding, dilation, edge_major), [wc],
                                g.to("cuda", dtype))
    assert torch.equal(again[0], gw)  # deterministic
