"""Where the time of a search step goes, and what the numeric options change (a script, not a pytest file).

    python benches/gpu_report.py [--batch 64] [--mode multilevel] [--sections profile,numerics]

- profile: wall ms per step, kernels per step, GPU kernel time per step and the top kernels of one step, for
  the plain path (DARTS' design: per-op modules, plain-torch mixed sums), the batched path (the default, eager)
  and the batched path replayed as one CUDA graph (``--cuda-graph``).
- search: a short search on real images (--data), batched path replayed as CUDA graphs, as ``mdarts-rs search
  --cuda-graph`` runs it: seconds per epoch and in all.
- numerics: the batched path's first α gradient under each numeric option (--tf32, --bf16) against float32
  (cosine, relative error), and the α tables after a short run from the same seed and batches (largest
  difference, genotype identical or not).
- traffic: the plain path and the batched path, the aten ops that launch kernels and the bytes of their tensors
  in the α and weight passes (forward and backward, no optimizer update), with the top ops by bytes: a
  device-independent proxy of kernels and memory traffic per step (runs on a CPU as well).
- drift: the plain path against itself with another summation order (the compiled ``weighted_sum`` and
  ``softmax_entropy`` instead of their plain-torch references) and against the batched path, over a few seeds,
  in float64 and float32: the largest α difference after a short run from the same seed and batches, and
  whether the genotypes agree (float32's rounding noise, measured).

On a machine without CUDA it runs the same code eagerly on a small batch (a dry run of the script).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from mdarts_rs.config import SearchConfig
from mdarts_rs.search import Searcher, entropy_loss

from conftest import DispatchCount, gpu_memory_mark, gpu_memory_used, searcher

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def batches(s: Searcher):
    (xt, yt), (xv, yv) = next(iter(s.train_loader)), next(iter(s.val_loader))
    return xt, yt, xv, yv


def stepper(s: Searcher, b):
    if s.use_graph:
        for _ in range(4):  # warm-up steps, capture, first replay
            s.graph_step(*b)
        s.flush_device_stats()
        assert s.captured is not None and s.captured.graph is not None, "the step was not captured"
        return lambda: s.graph_step(*b)
    return lambda: s.train_step(*b)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def ms_per_step(step, n: int) -> float:
    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return (time.perf_counter() - t0) / n * 1e3


def kernel_profile(step, top: int) -> tuple[int, float, list[tuple[str, int, float]]]:
    """Kernels (or aten ops on the CPU) in one step, their summed time in ms, and the top entries by time."""
    with profile(activities=[ProfilerActivity.CUDA if CUDA else ProfilerActivity.CPU]) as prof:
        step()
        sync()
    by_name: dict[str, list[float]] = defaultdict(list)
    for e in prof.events():
        if (CUDA and e.device_type == torch.autograd.DeviceType.CUDA) or (not CUDA and e.name.startswith("aten::")):
            by_name[e.name].append(e.time_range.elapsed_us() / 1e3)
    rows = sorted(((name, len(ts), sum(ts)) for name, ts in by_name.items()), key=lambda r: -r[2])
    return sum(r[1] for r in rows), sum(r[2] for r in rows), rows[:top]


def make_searcher(args, fast: bool = True, graph: bool = False, **kw) -> Searcher:
    """A searcher of ``args``' layout and batch on random images: the batched path when ``fast``, replayed as a
    CUDA graph when ``graph`` (and a GPU is there); ``kw``: further SearchConfig fields (bf16, tf32, arch_lr...)."""
    return searcher(args.batch, fast=fast, cuda_graph=graph and CUDA, alpha_mode=args.mode, device=DEVICE, **kw)


def section_profile(args) -> None:
    print(f"\n## profile: {args.mode}, batch {args.batch}, {DEVICE}")
    paths = [("plain", {"fast": False}), ("batched", {"fast": True})] + (
        [("batched_graph", {"fast": True, "graph": True})] if CUDA else []
    )
    summary = []
    for name, kw in paths:
        # the plain path as DARTS runs it (plain-torch mixed sums); the batched one with the compiled ops on a GPU
        os.environ["MDARTS_OPS"] = "ref" if name == "plain" else "auto"
        mark = gpu_memory_mark() if CUDA else None  # this path's own memory: searcher, eager steps, graph pool
        s = make_searcher(args, **kw)
        step = stepper(s, batches(s))
        ms = ms_per_step(step, args.steps if name != "plain" else max(2, args.steps // 4))
        # the most allocated at once (eager steps) or what the replayed graph holds, whichever is more
        peak = max(gpu_memory_used(mark)) / 2**30 if mark is not None else float("nan")
        count, total, rows = kernel_profile(step, args.top)
        summary.append((name, ms, count, total, peak))
        print(
            f"\n### {name}: {ms:.1f} ms/step wall, {count} {'kernels' if CUDA else 'aten ops'}/step, {total:.1f} ms "
            f"summed {'kernel' if CUDA else 'op'} time, peak {peak:.2f} GiB"
        )
        print(f"{'calls':>7} {'ms':>8} {'share':>6}  name")
        for kname, calls, t in rows:
            print(f"{calls:7d} {t:8.2f} {t / total:6.1%}  {kname[:110]}")
        del s, step
    os.environ["MDARTS_OPS"] = "auto"
    print("\n| path | ms/step | kernels/step | kernel ms/step | peak GiB | speed-up |\n|---|---|---|---|---|---|")
    for name, ms, count, total, peak in summary:
        print(f"| {name} | {ms:.1f} | {count} | {total:.1f} | {peak:.2f} | {summary[0][1] / ms:.1f}x |")


#: The numeric options of the numerics section, as SearchConfig flags; the first is the reference.
NUMERIC = {"float32": {}, "tf32": {"tf32": True}, "bf16": {"bf16": True}}


def alpha_grad(s: Searcher, b) -> torch.Tensor:
    _, _, xv, yv = b
    p, h = s.model.softmax_entropy()
    with s.parts.autocast():
        logits = s.model(xv, p)
    loss = F.cross_entropy(logits.float(), yv) + s.cfg.gamma * entropy_loss(h, s.cfg.entropy_reduction)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, s.model.arch_parameters())]).double()


def section_numerics(args) -> None:
    print(
        f"\n## numerics against float32 (batched path, {args.mode}, batch {args.batch}, "
        f"{args.numeric_steps} steps at arch lr {args.numeric_arch_lr})"
    )
    print(
        "| option | first α grad cosine | first α grad rel. error | max abs α diff after run | "
        "max abs α change (fp32) | genotype identical |\n|---|---|---|---|---|---|"
    )
    ref_grad = ref_alpha = ref_geno = init = None
    for name, flags in NUMERIC.items():
        gc.collect()
        s = make_searcher(args, graph=True, arch_lr=args.numeric_arch_lr, **flags)
        b = batches(s)
        g = alpha_grad(s, b)
        if init is None:
            init = torch.cat([a.detach().flatten() for a in s.model.arch_parameters()]).double()
        steps = [b]
        for epoch in itertools.count():
            for (xt, yt), (xv, yv) in zip(s.train_loader.batches(epoch), s.val_loader.batches(epoch)):
                steps.append((xt, yt, xv, yv))
            if len(steps) >= args.numeric_steps:
                break
        for bb in steps[: args.numeric_steps]:
            if s.use_graph:
                s.graph_step(*bb)
            else:
                s.train_step(*bb)
        s.flush_device_stats()
        alpha = torch.cat([a.detach().flatten() for a in s.model.arch_parameters()]).double()
        geno = s.model.genotype().to_json()
        if ref_grad is None:
            ref_grad, ref_alpha, ref_geno = g, alpha, geno
        cos = float(F.cosine_similarity(g, ref_grad, dim=0))
        rel = float((g - ref_grad).norm() / ref_grad.norm())
        print(
            f"| {name} | {cos:.5f} | {rel:.2e} | {float((alpha - ref_alpha).abs().max()):.2e} | "
            f"{float((ref_alpha - init).abs().max()):.2e} | {geno == ref_geno} |",
            flush=True,
        )
        del s


def section_search(args) -> None:
    """A whole search of ``--search-epochs`` epochs on real images (``--data``), as ``mdarts-rs search
    --cuda-graph`` runs it (its run folder: --search-out, by default a temporary one): seconds per epoch and in all."""
    from mdarts_rs import data
    from mdarts_rs.search import run_search

    images, labels = data.load_cifar10(args.data)
    print(f"\n## search: {len(labels)} images ({args.data}), {args.search_epochs} epochs, batch {args.batch}")
    with tempfile.TemporaryDirectory(prefix="mdarts-gpu-report-") as tmp:
        cfg = SearchConfig(
            out=args.search_out or f"{tmp}/search",
            alpha_mode=args.mode,
            epochs=args.search_epochs,
            batch_size=args.batch,
            supernet="batched",
            cuda_graph=CUDA,
            device=DEVICE,
            plots=False,
            quiet=True,
            steps_per_epoch=args.search_steps,
        )
        t0 = time.time()
        result = run_search(cfg, images, labels)
        total = time.time() - t0
    steps = min((len(labels) // 2) // args.batch, args.search_steps or len(labels))
    for rec in result.history:
        print(
            f"epoch {rec['epoch']}: {rec['seconds']:.1f} s in steps ({steps} steps, {rec['seconds'] / steps * 1e3:.1f} ms/step), "
            f"train acc {rec['train_acc']:.3f}, val acc {rec['val_acc']:.3f}, gap {rec['gap']['gap']:+.3f}"
        )
    print(f"whole run: {total:.1f} s (setup, steps, per-epoch derivation, gap and checkpoint)")
    print(f"genotype: {result.genotype}")


def passes(s: Searcher, b) -> None:
    """The α pass (gradients of L_val + γ·L_entropy for α) and the weight pass (L_train's backward, α fixed) of a
    search step, without the optimizers' updates."""
    xt, yt, xv, yv = b
    model, cfg = s.model, s.cfg
    p, h = model.softmax_entropy()
    loss = F.cross_entropy(model(xv, p), yv) + cfg.gamma * entropy_loss(h, cfg.entropy_reduction)
    torch.autograd.grad(loss, model.arch_parameters())
    with torch.no_grad():
        p, _ = model.softmax_entropy()
    F.cross_entropy(model(xt, p), yt).backward()


def section_traffic(args) -> None:
    from mdarts_rs import ops

    try:
        ops.load_extension()
        compiled = "ext" if not CUDA else "auto"
    except (ImportError, OSError, RuntimeError) as e:  # no compiler, failed build: the batched row runs the references
        print(f"(compiled ops unavailable: {type(e).__name__}: {e})")
        compiled = "ref"
    print(
        f"\n## traffic: {args.mode}, batch {args.batch}, C = 16, 8 cells; α pass and weight pass, forward and backward"
    )
    summary = []
    # the plain path as profile and bench_search_step time it (plain-torch mixed sums); the batched path with the
    # compiled ops where they build (its softmax_entropy)
    for name, fast, mode in [("plain", False, "ref"), ("batched", True, compiled)]:
        os.environ["MDARTS_OPS"] = mode
        gc.collect()
        s = make_searcher(args, fast=fast)
        b = batches(s)
        passes(s, b)  # first calls build and autotune
        s.model.zero_grad(set_to_none=True)
        with DispatchCount() as counts:
            passes(s, b)
        sync()
        calls, gb = counts.total()
        summary.append((name, calls, gb))
        print(f"\n### {name}: {calls} kernel-launching aten ops, {gb:.1f} GB of tensors (read and written)")
        print(f"{'calls':>7} {'GB':>7} {'share':>6}  op")
        for op, b in counts.bytes.most_common(args.top):
            print(f"{counts.calls[op]:7d} {b / 1e9:7.2f} {b / 1e9 / gb:6.1%}  {op}")
        del s
    os.environ["MDARTS_OPS"] = "auto"
    print("\n| path | kernel-launching ops | GB of tensors |\n|---|---|---|")
    for name, calls, gb in summary:
        print(f"| {name} | {calls} | {gb:.1f} |")


def section_drift(args) -> None:
    """Each seed: the plain path (plain-torch references of the mixed sum and the softmax), the plain path with the
    compiled ``weighted_sum`` and ``softmax_entropy`` (another summation order) and the batched path make
    ``--drift-steps`` steps on the same batches; the largest α difference to the first, and whether the derived
    genotypes agree."""
    from mdarts_rs import ops

    c, layers = (int(v) for v in args.drift_model.split(","))
    print(
        f"\n## drift from the plain path: C = {c}, {layers} cells, batch {args.batch}, {args.drift_steps} steps at arch lr "
        f"{args.drift_lr}, {DEVICE}"
    )
    print(
        "| dtype | seed | α change (plain) | plain, compiled ops: max α diff | genotype same | batched: max α diff | genotype same |"
    )
    print("|---|---|---|---|---|---|---|")
    paths = [("ref", False), ("ext", False), ("auto", True)]
    try:
        ops.load_extension()
    except (ImportError, OSError, RuntimeError) as e:  # no compiler, failed build: the compiled ops' row is left out
        print(f"(compiled ops unavailable: {type(e).__name__}: {e})")
        paths = [("ref", False), ("auto", True)]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4 * args.batch * args.drift_steps, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images)).astype(np.int64)
    for dtype, seed in itertools.product((torch.float64, torch.float32), range(args.drift_seeds)):
        alphas, genos = [], []
        for mode, fast in paths:
            os.environ["MDARTS_OPS"] = mode
            s = searcher(
                args.batch,
                (images, labels),
                fast=fast,
                alpha_mode=args.mode,
                init_channels=c,
                layers=layers,
                arch_lr=args.drift_lr,
                seed=seed,
                device=DEVICE,
            )
            init = torch.cat([a.detach().flatten() for a in s.model.arch_parameters()]).double()
            s.model.to(dtype)  # parameters keep their identity, so the optimizers follow
            for (xt, yt), (xv, yv) in itertools.islice(
                zip(s.train_loader.batches(0), s.val_loader.batches(0)), args.drift_steps
            ):
                s.train_step(xt.to(dtype), yt, xv.to(dtype), yv)
            alphas.append(torch.cat([a.detach().flatten() for a in s.model.arch_parameters()]).double())
            genos.append(s.model.genotype().to_json())
        os.environ["MDARTS_OPS"] = "auto"
        cells = []
        for a, g in zip(alphas[1:], genos[1:]):
            cells += [f"{float((a - alphas[0]).abs().max()):.2e}", str(g == genos[0])]
        if len(paths) == 2:
            cells = ["-", "-", *cells]
        print(
            f"| {str(dtype).split('.')[-1]} | {seed} | {float((alphas[0] - init).abs().max()):.2e} | {' | '.join(cells)} |",
            flush=True,
        )


SECTIONS = {
    "profile": section_profile,
    "search": section_search,
    "numerics": section_numerics,
    "traffic": section_traffic,
    "drift": section_drift,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64 if CUDA else 8)
    ap.add_argument("--mode", default="multilevel", choices=["multilevel", "shared"])
    ap.add_argument("--steps", type=int, default=20 if CUDA else 2, help="timed steps per row")
    ap.add_argument("--top", type=int, default=15, help="kernels listed per path")
    ap.add_argument("--numeric-steps", type=int, default=30 if CUDA else 3)
    ap.add_argument("--numeric-arch-lr", type=float, default=3e-3)
    ap.add_argument("--sections", default="profile,numerics", help="comma-separated, of: " + ", ".join(SECTIONS))
    ap.add_argument("--data", help="CIFAR-10 folder for the search section")
    ap.add_argument("--search-out", help="the search section's run folder (default: a temporary one, removed after)")
    ap.add_argument("--search-epochs", type=int, default=2)
    ap.add_argument("--search-steps", type=int, help="cap the steps of each search epoch (dry runs)")
    ap.add_argument("--drift-seeds", type=int, default=5)
    ap.add_argument("--drift-steps", type=int, default=6)
    ap.add_argument("--drift-lr", type=float, default=0.01)
    ap.add_argument("--drift-model", default="16,8" if CUDA else "4,5", help="C,cells of the drift section's supernet")
    args = ap.parse_args()
    dev = torch.cuda.get_device_name(0) if CUDA else "no CUDA device"
    print(f"# gpu_report: {dev}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    unknown = [sec for sec in args.sections.split(",") if sec not in SECTIONS]
    if unknown:
        ap.error(f"unknown sections {unknown}; there are {', '.join(SECTIONS)}")
    for sec in args.sections.split(","):
        t0 = time.time()
        SECTIONS[sec](args)
        print(f"({sec}: {time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
