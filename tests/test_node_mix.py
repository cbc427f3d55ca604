"""The fused mixed sums of a batched node (``mdarts::node_mix``) against their plain-torch reference, and
the batched cell built with them against the plain cell."""

from __future__ import annotations

import pytest
import torch

from mdarts_rs import fastcell, ops
from mdarts_rs.ops import node_mix_ref
from cellcheck import assert_fast_cell_matches_plain
from cudacompare import assert_cuda_matches_reference

#: Per-edge (n) or shared (1) op outputs, in the order of a node's 7 candidate ops.
NODE = (1, 1, 1, "n", "n", "n", "n")


@pytest.fixture(scope="module")
def ext():
    """The compiled CPU kernels (built on first use; about a minute)."""
    ops.load_extension(with_cuda=False)
    return torch.ops.mdarts


def mix_inputs(b, n, r, pattern=NODE, dtype=torch.float64, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(b, n if k == "n" else 1, r, generator=g, dtype=dtype).requires_grad_(grad) for k in pattern]
    w = torch.rand(n, len(pattern), generator=g, dtype=dtype).requires_grad_(grad)
    return xs, w


def test_node_mix_reference_is_the_per_edge_sum():
    xs, w = mix_inputs(2, 3, 5)
    out = node_mix_ref(xs, w)
    for e in range(3):
        expected = sum(w[e, k] * x[:, e if x.shape[1] == 3 else 0] for k, x in enumerate(xs))
        torch.testing.assert_close(out[:, e], expected)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("b", "n", "r", "pattern"), [(2, 3, 5, NODE), (3, 1, 4, NODE), (2, 4, 3, ("n",)), (1, 2, 6, (1, 1))])
def test_node_mix_gradcheck_float64(ext, seed, b, n, r, pattern):
    xs, w = mix_inputs(b, n, r, pattern, seed=seed)
    assert torch.autograd.gradcheck(lambda w, *xs: ext.node_mix(list(xs), w), (w, *xs))
    torch.testing.assert_close(ext.node_mix(xs, w), node_mix_ref(xs, w), rtol=1e-12, atol=1e-12)


def test_node_mix_partial_grads_and_noncontiguous_inputs(ext):
    xs, w = mix_inputs(2, 3, 8, grad=False)
    xs[4] = xs[4].transpose(0, 1).contiguous().transpose(0, 1)  # same values, another memory layout
    w.requires_grad_(True)
    (gw,) = torch.autograd.grad(ext.node_mix(xs, w).square().sum(), w)
    (gw_ref,) = torch.autograd.grad(node_mix_ref(xs, w).square().sum(), w)
    torch.testing.assert_close(gw, gw_ref)
    xs2, w2 = mix_inputs(2, 3, 4)
    w2.requires_grad_(False)  # inputs need gradients, weights do not
    assert torch.autograd.gradcheck(lambda *xs: ext.node_mix(list(xs), w2), tuple(xs2))


def test_node_mix_empty_shapes(ext):
    xs, w = mix_inputs(0, 3, 4)
    out = ext.node_mix(xs, w)
    assert out.shape == (0, 3, 4)
    gw = torch.autograd.grad(out.sum(), w)[0]
    assert gw.shape == (3, 7) and float(gw.abs().sum()) == 0.0
    xs, w = mix_inputs(2, 0, 4, pattern=(1, 1))  # no edges: shared inputs get zero gradients
    out = ext.node_mix(xs, w)
    assert out.shape == (2, 0, 4)
    grads = torch.autograd.grad(out.sum(), xs)
    assert all(g.shape == (2, 1, 4) and float(g.abs().sum()) == 0.0 for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_node_mix_low_precision_matches_reference(ext, dtype):
    xs, w = mix_inputs(4, 4, 64, dtype=torch.float32, grad=False)
    ref = node_mix_ref([x.double() for x in xs], w.double())
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    out = ext.node_mix([x.to(dtype) for x in xs], w)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * 4)


def test_node_mix_rejects_bad_arguments(ext):
    xs, w = mix_inputs(2, 3, 4, grad=False)
    with pytest.raises(RuntimeError, match="7 inputs but w has 6 columns"):
        ext.node_mix(xs, w[:, :6])
    with pytest.raises(RuntimeError, match=r"xs\[3\] has 2 edge slices; expected 3"):
        ext.node_mix([*xs[:3], xs[3][:, :2], *xs[4:]], w)
    with pytest.raises(RuntimeError, match=r"xs\[1\] has shape"):
        ext.node_mix([xs[0], xs[1][:, :, :2], *xs[2:]], w)
    with pytest.raises(RuntimeError, match="must be \\(edges, inputs\\)"):
        ext.node_mix(xs, w[0])


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
@pytest.mark.parametrize("args", ["grad_both", "grad_w", "no_grad"])
def test_node_mix_opcheck(ext, args):
    xs, w = mix_inputs(2, 3, 16, dtype=torch.float32, grad=args == "grad_both")
    w.requires_grad_(args != "no_grad")
    torch.library.opcheck(ext.node_mix.default, (xs, w))


@pytest.mark.parametrize("reduction", [False, True])
def test_fast_cell_with_fused_mix_matches_plain_cell(ext, monkeypatch, reduction):
    """The batched cell with ``OPTIONS['mix'] = 'fused'`` (compiled CPU kernels) computes the plain cell's
    output and α gradient."""
    monkeypatch.setenv("MDARTS_OPS", "ext")
    monkeypatch.setitem(fastcell.OPTIONS, "mix", "fused")
    _, fast = assert_fast_cell_matches_plain(reduction)
    assert fast.nodes[0].fused_mix


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_node_mix_cuda_matches_cpu_reference(dtype):
    ops.load_extension(with_cuda=True)
    xs, w = mix_inputs(8, 4, 16 * 16 * 16, dtype=torch.float32)
    # grad_w sums 32,768 products: a larger absolute tolerance
    assert_cuda_matches_reference(torch.ops.mdarts.node_mix, node_mix_ref, xs, w, dtype, grad_atol=100)
