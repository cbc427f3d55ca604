"""The fused mixed-op sum against naive ``sum(w*x)`` and ``torch.stack`` + ``tensordot``, forward and
forward+backward, K = 8, on the GPU when there is one (else the CPU, with smaller shapes).

Run: ``pytest benches/bench_ops.py``. Each row prints its effective bandwidth (the minimum bytes moved
divided by the time) and, on a known GPU, its share of the card's peak memory bandwidth; the summary gives
each implementation's speed relative to the naive baseline of the same shape, dtype and pass.
"""

from __future__ import annotations

import pytest
import torch
from conftest import record

from mdarts_rs import ops

K = 8
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
SHAPES = [(64, 16, 32, 32), (64, 32, 16, 16), (64, 64, 8, 8), (256, 64, 32, 32)] if CUDA else [(64, 16, 32, 32), (16, 64, 8, 8)]
DTYPES = [torch.float32, torch.bfloat16]
#: Peak memory bandwidth (bytes/s) of the cards this project is measured on.
PEAK = {"H100": 3.35e12, "H200": 4.8e12}


def peak_bandwidth() -> float | None:
    if not CUDA:
        return None
    name = torch.cuda.get_device_name(0)
    return next((bw for key, bw in PEAK.items() if key in name), None)


@pytest.fixture(scope="module", autouse=True)
def compiled_ops():
    ops.load_extension()


def naive(xs, w):
    return sum(w[k] * xs[k] for k in range(len(xs)))


def stacked(xs, w):
    return torch.tensordot(w.to(xs[0].dtype), torch.stack(xs), dims=1)


def fused(xs, w):
    return torch.ops.mdarts.weighted_sum(xs, w)


IMPLS = {"baseline_naive": naive, "stack_tensordot": stacked, "fused": fused}


def sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_weighted_sum(benchmark, impl, backward, dtype, shape):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    xs = [torch.randn(shape, device=DEVICE, dtype=dtype, generator=g).requires_grad_(backward) for _ in range(K)]
    w = torch.rand(K, device=DEVICE, generator=g).requires_grad_(backward)
    fn = IMPLS[impl]
    out = fn(xs, w)
    ref = naive([x.float() for x in xs], w)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    grad = torch.ones_like(out)

    def run():
        y = fn(xs, w)
        if backward:
            torch.autograd.grad(y, [w, *xs], grad)
        sync()

    benchmark.pedantic(run, rounds=20, iterations=5, warmup_rounds=3)
    n = out.numel() * out.element_size()
    moved = (3 * K + 2) * n if backward else (K + 1) * n  # fwd: K reads + 1 write; bwd: g, K reads, K writes
    bw = moved / benchmark.stats.stats.mean
    benchmark.extra_info["GB/s"] = round(bw / 1e9, 1)
    peak = peak_bandwidth()
    if peak:
        benchmark.extra_info["share_of_peak"] = round(bw / peak, 3)
    name = "x".join(map(str, shape))
    group = f"weighted_sum {name} {str(dtype).split('.')[-1]} {'fwd+bwd' if backward else 'fwd'} ({DEVICE.type})"
    record(group, impl, benchmark, 1)
    print(f"\n{group} {impl}: {bw / 1e9:.1f} GB/s" + (f" ({bw / peak:.0%} of peak)" if peak else ""))


@pytest.mark.parametrize("impl", ["baseline_ref", "fused"])
def test_softmax_entropy(benchmark, impl):
    alpha = torch.randn(14, 8, device=DEVICE, requires_grad=True)
    fn = ops.softmax_entropy_ref if impl == "baseline_ref" else torch.ops.mdarts.softmax_entropy
    p, h = fn(alpha)
    p_ref, h_ref = ops.softmax_entropy_ref(alpha)
    torch.testing.assert_close(p, p_ref)
    torch.testing.assert_close(h, h_ref)

    def run():
        p, h = fn(alpha)
        torch.autograd.grad((p.sum(dim=0) * torch.arange(8.0, device=DEVICE)).sum() + h.sum(), alpha)
        sync()

    benchmark.pedantic(run, rounds=50, iterations=10, warmup_rounds=5)
    record(f"softmax_entropy fwd+bwd (14, 8) ({DEVICE.type})", impl, benchmark, 1)


# The search cell's depthwise convolutions at batch 64 (GPU) or 8 (CPU): (B, C, H, W, multiplier, K, stride,
# padding, dilation) for a level-1 separable 5×5 first block, its second block, a dilated 5×5 reduction edge and
# a level-3 separable 3×3.
DW_SHAPES = [(64, 16, 32, 32, 4, 5, 1, 2, 1), (64, 64, 32, 32, 1, 5, 1, 2, 1), (64, 16, 32, 32, 4, 5, 2, 4, 2),
             (64, 64, 8, 8, 4, 3, 1, 1, 1)]
if not CUDA:
    DW_SHAPES = [(8, *s[1:]) for s in DW_SHAPES]


@pytest.mark.parametrize("shape", DW_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("grads", ["", "x", "w", "xw"], ids=["fwd", "fwd_gradx", "fwd_gradw", "fwd_bwd"])
@pytest.mark.parametrize("impl", ["baseline_conv2d", "fused"])
def test_depthwise_conv(benchmark, impl, grads, shape):
    """On a GPU each round replays the pass captured as a CUDA graph, as the search step runs it: kernel time
    without the per-call Python overhead (which the fused op's autograd has more of). The forward alone, with
    the input's gradient, with the weight's, and with both: their differences time each gradient's kernels
    (the weight pass of a search step needs both, the α pass only the input's)."""
    b, c, h, w, m, k, stride, padding, dilation = shape
    backward = bool(grads)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(b, c, h, w, device=DEVICE, generator=g, requires_grad="x" in grads)
    wt = torch.randn(c * m, 1, k, k, device=DEVICE, generator=g, requires_grad="w" in grads)
    wanted = [t for t in (x, wt) if t.requires_grad]
    if impl == "fused":
        def fn(x, wt):
            return torch.ops.mdarts.depthwise_conv(x, wt, stride, padding, dilation, False)
    else:
        def fn(x, wt):
            return torch.nn.functional.conv2d(x, wt, None, stride, padding, dilation, c)
    out = fn(x, wt)
    grad = torch.randn_like(out)
    ref = torch.nn.functional.conv2d(x, wt, None, stride, padding, dilation, c)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)

    def one_pass():
        y = fn(x, wt)
        if backward:
            torch.autograd.grad(y, wanted, grad)

    run = one_pass
    if CUDA:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                one_pass()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            one_pass()
        run = graph.replay

    def timed():
        run()
        sync()

    benchmark.pedantic(timed, rounds=20, iterations=5, warmup_rounds=3)
    passes = {"": "fwd", "x": "fwd+grad_x", "w": "fwd+grad_w", "xw": "fwd+bwd"}[grads]
    record(f"depthwise_conv {passes} {'x'.join(map(str, shape))} ({DEVICE.type}{', graph' if CUDA else ''})", impl, benchmark, 1)
