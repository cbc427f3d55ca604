"""One first-order search step (an α step and a weight step, as ``Searcher.train_step`` makes them): the plain
supernet (DARTS' design: per-op modules) against the batched one (the default), eagerly and, on a GPU, replayed as
one CUDA graph (``--cuda-graph``), both α layouts, side by side in one run.

Run: ``pytest benches/bench_search_step.py``. On a GPU: batch 64 and 256, C = 16, 8 cells, float32 (no TF32),
cuDNN autotuning on, as the search runs; the plain path uses the plain-torch mixed sums. Each row first checks
that its step's losses are finite, then logs ms per step, kernels per step (CUDA kernels in a profiled step) and
peak memory: for an eager step the most memory allocated at once; for a replayed graph the memory it holds for
good (its private pool, kept between replays, and the live tensors: ``memory_reserved`` after ``empty_cache``),
which the allocator's peak statistics did not show. On a CPU: batch 8, and instead of kernels the aten ops that
would launch one and the bytes of their tensors (``DispatchCount``). The summary gives speed relative to the
plain path.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from mdarts_rs.search import Searcher

from conftest import DispatchCount, cpu_peak_bytes, gpu_memory_mark, gpu_memory_used, record, searcher

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
#: Batch sizes on a GPU (MDARTS_BENCH_BATCHES="64" for a shorter run).
BATCHES = [int(b) for b in os.environ.get("MDARTS_BENCH_BATCHES", "64,256").split(",")] if CUDA else [8]


def make_searcher(mode: str, fast: bool, batch: int, graph: bool = False) -> Searcher:
    return searcher(batch, fast=fast, cuda_graph=graph, alpha_mode=mode, device=DEVICE)


def count_kernels(step) -> tuple[int, float]:
    """CUDA kernels of one step (GB unknown: nan), or on a CPU its kernel-launching aten ops and their GB."""
    if not CUDA:
        with DispatchCount() as counts:
            step()
        return counts.total()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA), float("nan")


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("mode", ["multilevel", "shared"])
@pytest.mark.parametrize("path", ["baseline_plain", "fast"] + (["fast_graph"] if CUDA else []))
def test_search_step(benchmark, monkeypatch, path, mode, batch):
    if CUDA:  # earlier rows' tensors and graph pools must not count towards this row's peak: from before the
        mark = gpu_memory_mark()  # model exists, as differences (in case an earlier row's objects are still alive)
    if path == "baseline_plain":  # DARTS' design: per-op modules and plain torch mixed sums, no compiled ops
        monkeypatch.setenv("MDARTS_OPS", "ref")
    s = make_searcher(mode, path != "baseline_plain", batch, graph=path == "fast_graph")
    (xt, yt), (xv, yv) = next(iter(s.train_loader)), next(iter(s.val_loader))
    if path == "fast_graph":
        for _ in range(4):  # 3 eager warm-up steps, then the capture and its first replay
            s.graph_step(xt, yt, xv, yv)
        s.flush_device_stats()  # raises if a statistic is not finite
        assert s.captured is not None and s.captured.graph is not None, "the step was not captured"

        def step():
            s.graph_step(xt, yt, xv, yv)
            torch.cuda.synchronize()
    else:
        out = s.train_step(xt, yt, xv, yv)
        assert np.isfinite(out["a_loss"]) and np.isfinite(out["train_loss"])

        def step():
            s.train_step(xt, yt, xv, yv)
            if CUDA:
                torch.cuda.synchronize()

    kernels, gb = count_kernels(step)
    eager = path != "fast_graph"  # hundreds of ms per step on a GPU; the graph-replayed step is the target
    benchmark.pedantic(step, rounds=(5 if eager else 20) if CUDA else 3, iterations=1, warmup_rounds=2 if CUDA else 1)
    if not benchmark.enabled:  # --benchmark-disable: the function ran once, untimed; nothing to log
        return
    benchmark.extra_info["kernels_per_step" if CUDA else "kernel_ops_per_step"] = kernels
    if CUDA:
        peak, held = gpu_memory_used(mark)
        benchmark.extra_info["peak_mem_GiB"] = round((held if path == "fast_graph" else peak) / 2**30, 2)
    else:
        benchmark.extra_info["tensor_GB_per_step"] = round(gb, 3)
    record(f"search step {mode} batch {batch} ({DEVICE})", path, benchmark, 1)
    print(
        f"\n{path} {mode} batch {batch}: {benchmark.stats.stats.mean * 1e3:.0f} ms/step, {kernels} "
        + (
            f"kernels/step, peak {benchmark.extra_info['peak_mem_GiB']} GiB"
            if CUDA
            else f"kernel-launching aten ops/step, {gb:.2f} GB of tensors"
        )
    )


@pytest.mark.parametrize("feed", ["baseline_fixed_batch", "loader"])
def test_search_epoch_feed(benchmark, cifar_train, feed):
    """Steps fed by the Rust loader against steps on one batch already on the device: a ratio near 1 means the
    search never waits for data. Batched supernet (with CUDA graphs on a GPU), real images when present."""
    x, y = cifar_train
    batch = 64 if CUDA else 8
    steps = 40 if CUDA else 4
    s = searcher(batch, (x, y), fast=True, cuda_graph=CUDA, device=DEVICE, workers=None)
    step = s.graph_step if CUDA else s.train_step
    (xt, yt), (xv, yv) = next(iter(s.train_loader)), next(iter(s.val_loader))
    for _ in range(4):  # warm-up (and, on a GPU, the capture and its first replay)
        step(xt, yt, xv, yv)
    s.flush_device_stats()  # graph mode: raises if a statistic is not finite (train_step checks its own)
    assert not CUDA or s.captured is not None and s.captured.graph is not None, "the step was not captured"

    def run():
        if feed == "loader":
            for k, ((a, b), (c, d)) in enumerate(zip(s.train_loader.batches(1), s.val_loader.batches(1))):
                if k == steps:
                    break
                step(a, b, c, d)
        else:
            for _ in range(steps):
                step(xt, yt, xv, yv)
        if CUDA:
            torch.cuda.synchronize()
        s.flush_device_stats()

    benchmark.pedantic(run, rounds=3 if CUDA else 1, iterations=1, warmup_rounds=1 if CUDA else 0)
    if not benchmark.enabled:  # --benchmark-disable: the function ran once, untimed; nothing to log
        return
    record(f"search epoch feed, {steps} steps, batch {batch} ({DEVICE})", feed, benchmark, steps)


#: The DARTS-family options against the default first-order step: DARTS' second order, PC-DARTS' partial
#: channels (K = 4, with edge normalisation).
VARIANTS = {"baseline_first_order": {}, "order_2": {"order": 2}, "partial_channels_4": {"partial_channels": 4}}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "batched"])
def test_search_step_variant(benchmark, variant, fast):
    """Step time and peak memory of ``--order 2`` and ``--partial-channels 4`` against the default step, plain and
    batched supernet, multi-level layout; on a CPU at batch 8 (C = 16, 8 cells), on a GPU at batch 64."""
    batch = 64 if CUDA else 8
    if CUDA:
        mark = gpu_memory_mark()
    s = searcher(batch, fast=fast, device=DEVICE, **VARIANTS[variant])
    (xt, yt), (xv, yv) = next(iter(s.train_loader)), next(iter(s.val_loader))
    out = s.train_step(xt, yt, xv, yv)
    assert np.isfinite(out["a_loss"]) and np.isfinite(out["train_loss"])

    def step():
        s.train_step(xt, yt, xv, yv)
        if CUDA:
            torch.cuda.synchronize()

    peak = gpu_memory_used(mark)[0] if CUDA else cpu_peak_bytes(step)
    benchmark.pedantic(step, rounds=5 if CUDA else 3, iterations=1, warmup_rounds=1)
    if not benchmark.enabled:
        return
    benchmark.extra_info["peak_mem_MiB"] = round(peak / 2**20, 1)
    group = f"search step variants, {'batched' if fast else 'plain'} supernet, batch {batch} ({DEVICE})"
    record(group, variant, benchmark, 1)
    _PEAKS.setdefault(group, {})[variant] = peak
    print(
        f"\n{variant} {'batched' if fast else 'plain'}: {benchmark.stats.stats.mean * 1e3:.0f} ms/step, peak {peak / 2**20:.1f} MiB"
    )


_PEAKS: dict[str, dict[str, int]] = {}


def test_search_step_variant_memory_summary():
    """The variants' peak memory relative to the first-order step (runs after the rows above; prints only)."""
    for group, peaks in _PEAKS.items():
        base = peaks.get("baseline_first_order")
        for name, peak in peaks.items():
            if base:
                print(f"{group}: {name} peak memory x{peak / base:.2f} of the first-order step's")


@pytest.mark.parametrize("k", [1, 2, 4])
def test_search_step_micro_batches(benchmark, k):
    """Step time and peak memory of ``--micro-batches K`` (the batch split into K chunks whose gradients are
    summed) at the same batch, batched supernet (C = 16, 8 cells); batch 16 on a CPU, 64 on a GPU."""
    batch = 64 if CUDA else 16
    if CUDA:
        mark = gpu_memory_mark()
    s = searcher(batch, fast=True, device=DEVICE, micro_batches=k)
    (xt, yt), (xv, yv) = next(iter(s.train_loader)), next(iter(s.val_loader))
    out = s.train_step(xt, yt, xv, yv)
    assert np.isfinite(out["a_loss"]) and np.isfinite(out["train_loss"])

    def step():
        s.train_step(xt, yt, xv, yv)
        if CUDA:
            torch.cuda.synchronize()

    peak = gpu_memory_used(mark)[0] if CUDA else cpu_peak_bytes(step)
    benchmark.pedantic(step, rounds=5 if CUDA else 3, iterations=1, warmup_rounds=1)
    if not benchmark.enabled:
        return
    benchmark.extra_info["peak_mem_MiB"] = round(peak / 2**20, 1)
    group = f"search step micro-batches, batched supernet, batch {batch} ({DEVICE})"
    name = "baseline_micro_batches_1" if k == 1 else f"micro_batches_{k}"
    record(group, name, benchmark, 1)
    _MICRO_PEAKS[k] = peak
    base = _MICRO_PEAKS.get(1)
    ratio = f" (x{peak / base:.2f} of one batch's)" if base else ""
    print(f"\nmicro_batches {k}: {benchmark.stats.stats.mean * 1e3:.0f} ms/step, peak {peak / 2**20:.1f} MiB{ratio}")


_MICRO_PEAKS: dict[int, int] = {}
