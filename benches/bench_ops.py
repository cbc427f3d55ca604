"""The package's compiled ops against their plain-torch references (``mdarts_rs.ops._ref``, the specification),
side by side in one run, on the GPU when there is one (else the CPU, with smaller shapes; the compiled CPU
kernels):

- ``weighted_sum`` (the mixed op Σ_k w[k]·xs[k], K = 8) against ``weighted_sum_ref`` and ``torch.stack`` +
  ``tensordot``, forward and forward+backward, float32 and bfloat16;
- ``softmax_entropy`` of one (14, 8) α table against ``softmax_entropy_ref``, forward+backward.

Run: ``pytest benches/bench_ops.py``. Every row checks its result (and, with a backward, its gradients) against
the reference before it is timed. The header names the device; each weighted_sum row prints its effective
bandwidth (the minimum bytes moved divided by the time) and, on a known GPU, its share of the card's peak memory
bandwidth; the summary gives each implementation's speed relative to the reference of the same shape, dtype and
pass.
"""

from __future__ import annotations

import pytest
import torch

from mdarts_rs import ops

from conftest import record

K = 8
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
#: Where the rows ran, in every group's name (the header names the CPU and GPU as well).
WHERE = f"cuda: {torch.cuda.get_device_name(0)}" if CUDA else "cpu"
SHAPES = (
    [(64, 16, 32, 32), (64, 32, 16, 16), (64, 64, 8, 8), (256, 64, 32, 32)]
    if CUDA
    else [(64, 16, 32, 32), (16, 64, 8, 8)]
)
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


def stacked(xs, w):
    return torch.tensordot(w.to(xs[0].dtype), torch.stack(xs), dims=1)


def compiled(xs, w):
    return torch.ops.mdarts.weighted_sum(xs, w)


IMPLS = {"baseline_ref": ops.weighted_sum_ref, "stack_tensordot": stacked, "compiled": compiled}


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
    # the reference in float64 from the same inputs: float32 rows agree to rounding, bfloat16 ones to its precision
    xs64, w64 = [x.detach().double().requires_grad_(backward) for x in xs], w.detach().double().requires_grad_(backward)
    ref = ops.weighted_sum_ref(xs64, w64)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    grad = torch.ones_like(out)
    if backward:
        got = torch.autograd.grad(out, [w, *xs], grad)
        want = torch.autograd.grad(ref, [w64, *xs64], grad.double())
        for name, a, b in zip(["w"] + [f"xs[{k}]" for k in range(K)], got, want):
            torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol, msg=lambda m, name=name: f"grad {name}: {m}")

    def run():
        y = fn(xs, w)
        if backward:
            torch.autograd.grad(y, [w, *xs], grad)
        sync()

    benchmark.pedantic(run, rounds=20, iterations=5, warmup_rounds=3)
    if not benchmark.enabled:  # --benchmark-disable: the function ran once, untimed; nothing to log
        return
    n = out.numel() * out.element_size()
    moved = (3 * K + 2) * n if backward else (K + 1) * n  # fwd: K reads + 1 write; bwd: g, K reads, K writes
    bw = moved / benchmark.stats.stats.mean
    benchmark.extra_info["GB/s"] = round(bw / 1e9, 1)
    peak = peak_bandwidth()
    if peak:
        benchmark.extra_info["share_of_peak"] = round(bw / peak, 3)
    name = "x".join(map(str, shape))
    group = f"weighted_sum {name} {str(dtype).split('.')[-1]} {'fwd+bwd' if backward else 'fwd'} ({WHERE})"
    record(group, impl, benchmark, 1)
    print(f"\n{group} {impl}: {bw / 1e9:.1f} GB/s" + (f" ({bw / peak:.0%} of peak)" if peak else ""))


@pytest.mark.parametrize("impl", ["baseline_ref", "compiled"])
def test_softmax_entropy(benchmark, impl):
    alpha = torch.randn(
        14, 8, device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(0), requires_grad=True
    )
    fn = ops.softmax_entropy_ref if impl == "baseline_ref" else torch.ops.mdarts.softmax_entropy
    col = torch.arange(8.0, device=DEVICE)

    def loss(p, h):  # a gradient through both outputs, different per column
        return (p.sum(dim=0) * col).sum() + h.sum()

    p, h = fn(alpha)
    p_ref, h_ref = ops.softmax_entropy_ref(alpha)
    torch.testing.assert_close(p, p_ref)
    torch.testing.assert_close(h, h_ref)
    (g,), (g_ref,) = torch.autograd.grad(loss(p, h), alpha), torch.autograd.grad(loss(p_ref, h_ref), alpha)
    torch.testing.assert_close(g, g_ref)

    def run():
        torch.autograd.grad(loss(*fn(alpha)), alpha)
        sync()

    benchmark.pedantic(run, rounds=50, iterations=10, warmup_rounds=5)
    if not benchmark.enabled:  # --benchmark-disable: the function ran once, untimed; nothing to log
        return
    record(f"softmax_entropy fwd+bwd (14, 8) ({WHERE})", impl, benchmark, 1)
