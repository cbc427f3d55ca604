"""Benchmark helpers: the device in the log, speed ratios against each group's baseline, a searcher of the plain or
the batched supernet, the GPU memory a row used, and a device-independent count of the kernels a step launches."""

from __future__ import annotations

import gc
import os
import platform
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_TIMES: dict[str, dict[str, float]] = {}

#: Aten ops that launch no kernel: views, metadata, allocation.
_NO_KERNEL = {
    "_reshape_alias",
    "_unsafe_view",
    "alias",
    "as_strided",
    "detach",
    "diagonal",
    "empty",
    "empty_strided",
    "expand",
    "lift_fresh",
    "narrow",
    "new_empty",
    "permute",
    "reshape",
    "select",
    "slice",
    "split",
    "split_with_sizes",
    "squeeze",
    "t",
    "transpose",
    "unbind",
    "unfold",
    "unsqueeze",
    "view",
}


class DispatchCount(TorchDispatchMode):
    """Per aten op that launches kernels: calls, and bytes of its tensor arguments and results (a lower bound
    of its memory traffic). A device-independent proxy of the kernels and traffic of a step; ops run with
    grad mode off are marked ``[bwd]`` (backward, and the inside of custom autograd functions and ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in _NO_KERNEL:
            key = name if torch.is_grad_enabled() else f"{name}[bwd]"
            self.calls[key] += 1
            self.bytes[key] += sum(
                t.numel() * t.element_size()
                for t in tree_flatten((args, kwargs, out))[0]
                if isinstance(t, torch.Tensor)
            )
        return out

    def total(self) -> tuple[int, float]:
        """Calls and GB in all."""
        return sum(self.calls.values()), sum(self.bytes.values()) / 1e9


def gpu_memory_mark() -> tuple[int, int]:
    """Frees what earlier work left unreferenced and resets the GPU's peak statistics; returns the memory allocated
    and reserved now, from which ``gpu_memory_used`` counts."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()


def gpu_memory_used(mark: tuple[int, int]) -> tuple[int, int]:
    """Bytes since ``mark``: the most allocated at once, and what stays reserved once unreferenced memory is freed
    (a replayed CUDA graph's private pool, kept between replays, which the peak statistics do not show)."""
    gc.collect()
    torch.cuda.empty_cache()
    return torch.cuda.max_memory_allocated() - mark[0], torch.cuda.memory_reserved() - mark[1]


def cpu_peak_bytes(fn) -> int:
    """The most CPU tensor memory ``fn`` holds at once beyond what was allocated before it: the running sum of
    the profiler's allocations and frees (each op's own, in order of start), at its highest."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def record(group: str, name: str, benchmark, items: int) -> None:
    """Remember a finished benchmark's mean time; `items` is the work per round (images, steps...)."""
    mean = benchmark.stats.stats.mean
    _TIMES.setdefault(group, {})[name] = mean
    benchmark.extra_info["items_per_s"] = items / mean


def pytest_report_header(config):
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    return f"mdarts-rs benches: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {dev}, torch {torch.__version__}"


def pytest_terminal_summary(terminalreporter):
    for group, times in _TIMES.items():
        base_name = next((n for n in times if n.startswith("baseline")), None)
        if base_name is None:
            continue
        terminalreporter.write_sep("-", f"{group}: speed relative to {base_name}")
        for name, t in times.items():
            terminalreporter.write_line(f"{name:<40} {t * 1e3:10.1f} ms   x{times[base_name] / t:6.2f}")


@pytest.fixture(scope="session")
def cifar_train():
    """Real CIFAR-10 training images if present (MDARTS_CIFAR_MINI or ../shared/data), else random ones."""
    from mdarts_rs import data

    env = os.environ.get("MDARTS_CIFAR_MINI")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
    if (root / "data_batch_1.bin").exists():
        return data.load_cifar10(root)
    rng = __import__("numpy").random.default_rng(0)
    return rng.integers(0, 256, (10_000, 3, 32, 32), dtype="uint8"), rng.integers(0, 10, 10_000).astype("int64")


def searcher(
    batch: int,
    data=None,
    *,
    fast: bool = False,
    cuda_graph: bool = False,
    bf16: bool = False,
    tf32: bool = False,
    **cfg,
):
    """A Searcher (which writes no files) over ``data`` (images, labels), by default 4 batches of random images
    (each split half), with the batched supernet when ``fast``, its steps replayed as a CUDA graph when
    ``cuda_graph``, and the numeric options ``bf16`` and ``tf32``; ``cfg``: the other SearchConfig fields (α
    layout, device, learning rates, model size...), over quiet defaults (one loader worker, no plots, 8 gap
    images)."""
    import numpy as np

    from mdarts_rs.config import SearchConfig
    from mdarts_rs.search import Searcher

    if data is None:
        rng = np.random.default_rng(0)
        data = (
            rng.integers(0, 256, (4 * batch, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, 4 * batch).astype(np.int64),
        )
    options = {"supernet": "batched" if fast else "plain", "cuda_graph": cuda_graph, "bf16": bf16, "tf32": tf32}
    config = SearchConfig(
        batch_size=batch, **({"workers": 1, "quiet": True, "plots": False, "gap_images": 8} | cfg | options)
    )
    return Searcher(config, *data)
