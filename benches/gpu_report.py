"""Where the time of a search step goes, and what the numeric options change (a script, not a pytest file).

    python benches/gpu_report.py [--batch 64] [--mode multilevel] [--sections variants,profile,numerics]

- variants: ms per step and peak memory of the graph-replayed batched path for the choices in
  ``fastcell.OPTIONS`` (each change from the defaults alone, and a few pairs), with --channels-last, --tf32
  and --bf16, and each one's first α gradient against the default's; the fastest float32 one that agrees with the
  default (relative error below 1e-2; float32 rounding gave up to 5e-4 on a CPU at batch 2) is written to
  --best-file.
- profile: wall ms per step, kernels per step, GPU kernel time per step and the top kernels of one step, for
  the plain path (plain-torch mixed sums), the batched path (eager) and the batched path replayed as one
  CUDA graph.
- search: a short search on real images (--data), seconds per epoch and in all.
- numerics: the first α gradient under each option against float32 (cosine, relative error), and the α
  tables after a short run from the same seed and batches (largest difference, genotype identical or not).
- traffic: per path, the aten ops that launch kernels and the bytes of their tensors in the α and weight
  passes (forward and backward, no optimizer update), with the top ops by bytes: a device-independent proxy
  of kernels and memory traffic per step (runs on a CPU as well).
- drift: the plain path against itself with another summation order (the fused weighted sums) and against
  the batched path, over a few seeds, in float64 and float32: the largest α difference after a short run
  from the same seed and batches, and whether the genotypes agree (float32's rounding noise, measured).

On a machine without CUDA it runs the same code eagerly on a small batch (a dry run of the script).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from conftest import DispatchCount, gpu_memory_mark, gpu_memory_used, variant, variant_searcher

from mdarts_rs.config import SearchConfig
from mdarts_rs.search import Searcher, entropy_loss

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
        assert s._graph is not None, "the step was not captured"
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


def section_profile(args, tmp: str) -> None:
    print(f"\n## profile: {args.mode}, batch {args.batch}, {DEVICE}; batched path variant: {args.fast or 'default'}")
    paths = [("plain", dict(fast=False)), ("fast", dict(fast=True)), ("fast_graph", dict(fast=True, graph=True))]
    summary = []
    for name, kw in paths:
        if name == "fast_graph" and not CUDA:
            continue
        os.environ["MDARTS_OPS"] = "ref" if name == "plain" else "auto"
        gc.collect()
        if CUDA:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        s = make_variant(args, f"{tmp}/{name}", "" if name == "plain" else args.fast, **kw)
        step = stepper(s, batches(s))
        ms = ms_per_step(step, args.steps if name != "plain" else max(2, args.steps // 4))
        peak = torch.cuda.max_memory_allocated() / 2**30 if CUDA else float("nan")
        count, total, rows = kernel_profile(step, args.top)
        summary.append((name, ms, count, total, peak))
        print(f"\n### {name}: {ms:.1f} ms/step wall, {count} {'kernels' if CUDA else 'aten ops'}/step, {total:.1f} ms "
              f"summed {'kernel' if CUDA else 'op'} time, peak {peak:.2f} GiB")
        print(f"{'calls':>7} {'ms':>8} {'share':>6}  name")
        for kname, calls, t in rows:
            print(f"{calls:7d} {t:8.2f} {t / total:6.1%}  {kname[:110]}")
        del s, step
    os.environ["MDARTS_OPS"] = "auto"
    print("\n| path | ms/step | kernels/step | kernel ms/step | peak GiB | speed-up |\n|---|---|---|---|---|---|")
    for name, ms, count, total, peak in summary:
        print(f"| {name} | {ms:.1f} | {count} | {total:.1f} | {peak:.2f} | {summary[0][1] / ms:.1f}x |")


def make_variant(args, tmp: str, spec: str, fast: bool = True, graph: bool = False, **kw) -> Searcher:
    """A searcher of ``args``' layout and batch on random images, with the batched-path variant ``spec``."""
    return variant_searcher(tmp, args.batch, spec, alpha_mode=args.mode, fast=fast, device=DEVICE, cuda_graph=graph and CUDA, **kw)


#: The variants timed, most wanted first (a section cut short by its time limit keeps the rows before): the
#: default, the fastest candidates and the side streams, then other implementations of the batched path (same
#: function), layouts and numeric options. The fused depthwise convolution ran cleanly on an H200, so its rows no
#: longer go last (where a kernel fault would only have ended the rows after it).
TIMED = ["", "mix=fused_bn,depthwise=fused", "mix=fused_bn", "streams=branches", "mix=fused_bn,depthwise=fused,streams=branches",
         "mix=fused_bn,streams=branches", "depthwise=fused", "inputs=separate", "inputs=separate,mix=fused_bn", "channels_last", "tf32",
         "bf16", "mix=fused", "mix=fused,depthwise=fused", "pointwise=dense", "pointwise=dense,mix=fused_bn", "pointwise=grouped",
         "batch_norm=native"]
NUMERIC = ["", "mix=fused_bn", "mix=fused", "tf32", "bf16", "channels_last", "pointwise=dense", "pointwise=grouped,batch_norm=native"]


def float64_alpha_grad(args, tmp: str) -> torch.Tensor:
    """The first α gradient of the default batched path in float64, from the same seed and batch as every variant's
    (all variants compute the same function): the reference their float32 rounding is measured against."""
    s = make_variant(args, f"{tmp}/v_float64", "")
    s.model.double()
    xt, yt, xv, yv = batches(s)
    g = alpha_grad(s, (xt.double(), yt, xv.double(), yv))
    del s
    return g


def section_variants(args, tmp: str) -> None:
    """Time every variant, and check its first α gradient against the default's (the same function: the float32
    variants agree to rounding) and against the float64 one (each variant's own rounding error); write the
    fastest float32 variant that agrees to ``args.best_file``."""
    print(f"\n## variants of the batched path ({'graph' if CUDA else 'eager'}): {args.mode}, batch {args.batch}")
    ref64 = float64_alpha_grad(args, tmp)
    print("| variant | ms/step | first α grad rel. error vs default | vs float64 | peak GiB |\n|---|---|---|---|---|")
    times, errors, ref = {}, {}, None
    for spec in args.variants.split(";") if args.variants is not None else TIMED:
        spec = "" if spec == "default" else spec
        gc.collect()
        mark = gpu_memory_mark() if CUDA else None  # this variant's own memory: searcher, eager steps, graph pool
        try:
            s = make_variant(args, f"{tmp}/v_{len(times)}", spec, graph=True)
            b = batches(s)
            g = alpha_grad(s, b)  # before any step: every variant starts from the same weights and α
            ref = g if ref is None else ref
            errors[spec] = float((g - ref).norm() / ref.norm())
            step = stepper(s, b)
            times[spec] = ms_per_step(step, args.steps)
            # the most allocated at once (eager steps) or what the replayed graph holds, whichever is more
            peak = max(gpu_memory_used(mark)) / 2**30 if mark is not None else float("nan")
            del s, step
        except Exception as e:  # one failing variant must not hide the others
            print(f"| {spec or 'default'} | failed: {type(e).__name__}: {str(e)[:200]} | | | |")
            continue
        error64 = float((g - ref64).norm() / ref64.norm())
        print(f"| {spec or 'default'} | {times[spec]:.1f} | {errors[spec]:.1e} | {error64:.1e} | {peak:.2f} |", flush=True)
        best = fastest_exact(times, errors)
        if best is not None and args.best_file:  # after every row: a section cut short keeps the best so far
            with open(args.best_file, "w") as f:
                f.write(best)
    best = fastest_exact(times, errors)
    if best is not None:
        print(f"fastest float32 variant: {best or 'default'}")
        args.fast = best  # the profile section, when it runs later in this process, profiles this one


def fastest_exact(times: dict[str, float], errors: dict[str, float]) -> str | None:
    """The fastest float32 variant whose α gradient agrees with the default's (float32 variants compute the same
    function: one that disagrees beyond rounding is wrong, not fast); None if there is none."""
    exact = {k: v for k, v in times.items() if "tf32" not in k and "bf16" not in k and errors[k] < 1e-2}
    return min(exact, key=exact.__getitem__) if exact else None


def alpha_grad(s: Searcher, b) -> torch.Tensor:
    xt, yt, xv, yv = b
    p, h = s.model.alphas()
    with s._autocast():
        logits = s.model(xv, p)
    loss = F.cross_entropy(logits.float(), yv) + s.cfg.gamma * entropy_loss(h, s.cfg.entropy_reduction)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, s.model.arch_parameters())]).double()


def section_numerics(args, tmp: str) -> None:
    print(f"\n## numerics against float32 (batched path, {args.mode}, batch {args.batch}, "
          f"{args.numeric_steps} steps at arch lr {args.numeric_arch_lr})")
    print("| option | first α grad cosine | first α grad rel. error | max abs α diff after run | "
          "max abs α change (fp32) | genotype identical |\n|---|---|---|---|---|---|")
    ref_grad = ref_alpha = ref_geno = init = None
    for name in NUMERIC:
        gc.collect()
        s = make_variant(args, f"{tmp}/n_{len(name)}{name}", name, arch_lr=args.numeric_arch_lr, graph=True)
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
        print(f"| {name or 'float32'} | {cos:.5f} | {rel:.2e} | {float((alpha - ref_alpha).abs().max()):.2e} | "
              f"{float((ref_alpha - init).abs().max()):.2e} | {geno == ref_geno} |", flush=True)
        del s


def section_search(args, tmp: str) -> None:
    """A whole search of ``--search-epochs`` epochs on real images (``--data``), as ``mdarts-rs search
    --fast --cuda-graph`` runs it, with the variant of ``--fast``: seconds per epoch and in all."""
    from mdarts_rs import data, fastcell
    from mdarts_rs.search import run_search

    images, labels = data.load_cifar10(args.data)
    flags, impl = variant(args.fast)
    cfg = SearchConfig(out=f"{tmp}/search", alpha_mode=args.mode, epochs=args.search_epochs, batch_size=args.batch, fast=True,
                       cuda_graph=CUDA, device=DEVICE, plots=False, quiet=True, steps_per_epoch=args.search_steps, **flags)
    print(f"\n## search: {len(labels)} images ({args.data}), {args.search_epochs} epochs, batch {args.batch}, "
          f"variant {args.fast or 'default'}")
    t0 = time.time()
    with fastcell.options(impl):
        result = run_search(cfg, images, labels)
    total = time.time() - t0
    steps = min((len(labels) // 2) // args.batch, args.search_steps or len(labels))
    for rec in result.history:
        print(f"epoch {rec['epoch']}: {rec['seconds']:.1f} s in steps ({steps} steps, {rec['seconds'] / steps * 1e3:.1f} ms/step), "
              f"train acc {rec['train_acc']:.3f}, val acc {rec['val_acc']:.3f}, gap {rec['gap']['gap']:+.3f}")
    print(f"whole run: {total:.1f} s (setup, steps, per-epoch derivation, gap and checkpoint)")
    print(f"genotype: {result.genotype}")


def section_traffic(args, tmp: str) -> None:
    from mdarts_rs import ops

    try:
        ops.load_extension()
        compiled = "ext" if not CUDA else "auto"
    except Exception as e:  # no compiler: the fused rows run the references
        print(f"(compiled ops unavailable: {type(e).__name__}: {e})")
        compiled = "ref"
    print(f"\n## traffic: {args.mode}, batch {args.batch}, C = 16, 8 cells; α pass and weight pass, forward and backward")
    summary = []
    rows = [("plain", "", False, "ref"), ("fast", args.fast, True, compiled)]
    rows += [(f"fast, {mix}", ",".join(filter(None, [args.fast, mix])), True, compiled) for mix in ("mix=fused", "mix=fused_bn")]
    for name, spec, fast, mode in rows:
        os.environ["MDARTS_OPS"] = mode
        gc.collect()
        s = make_variant(args, f"{tmp}/t_{len(summary)}", spec, fast=fast)
        xt, yt, xv, yv = batches(s)
        model, alphas, cfg = s.model, s.model.arch_parameters(), s.cfg

        def passes() -> None:
            p, h = model.alphas()
            loss = F.cross_entropy(model(xv, p), yv) + cfg.gamma * entropy_loss(h, cfg.entropy_reduction)
            torch.autograd.grad(loss, alphas)
            with torch.no_grad():
                p, _ = model.alphas()
            F.cross_entropy(model(xt, p), yt).backward()

        passes()  # first calls build and autotune
        model.zero_grad(set_to_none=True)
        with DispatchCount() as counts:
            passes()
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


def section_drift(args, tmp: str) -> None:
    """Each seed: the plain path (plain-torch sums), the plain path with the fused weighted sums and the batched
    path make ``--drift-steps`` steps on the same batches; the largest α difference to the first, and whether
    the derived genotypes agree."""
    from mdarts_rs import ops

    c, layers = (int(v) for v in args.drift_model.split(","))
    print(f"\n## drift from the plain path: C = {c}, {layers} cells, batch {args.batch}, {args.drift_steps} steps at arch lr "
          f"{args.drift_lr}, {DEVICE}")
    print("| dtype | seed | α change (plain) | plain, fused sums: max α diff | genotype same | batched: max α diff | genotype same |")
    print("|---|---|---|---|---|---|---|")
    paths = [("ref", False), ("ext", False), ("auto", True)]
    try:
        ops.load_extension()
    except Exception as e:  # no compiler: the fused sums' row is left out
        print(f"(fused sums unavailable: {type(e).__name__}: {e})")
        paths = [("ref", False), ("auto", True)]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4 * args.batch * args.drift_steps, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images)).astype(np.int64)
    for dtype, seed in itertools.product((torch.float64, torch.float32), range(args.drift_seeds)):
        alphas, genos = [], []
        for k, (mode, fast) in enumerate(paths):
            os.environ["MDARTS_OPS"] = mode
            cfg = SearchConfig(out=f"{tmp}/drift_{k}", alpha_mode=args.mode, init_channels=c, layers=layers, fast=fast, batch_size=args.batch,
                               arch_lr=args.drift_lr, seed=seed, device=DEVICE, workers=1, quiet=True, plots=False, gap_images=8)
            s = Searcher(cfg, images, labels)
            init = torch.cat([a.detach().flatten() for a in s.model.arch_parameters()]).double()
            s.model.to(dtype)  # parameters keep their identity, so the optimizers follow
            for (xt, yt), (xv, yv) in itertools.islice(zip(s.train_loader.batches(0), s.val_loader.batches(0)), args.drift_steps):
                s.train_step(xt.to(dtype), yt, xv.to(dtype), yv)
            alphas.append(torch.cat([a.detach().flatten() for a in s.model.arch_parameters()]).double())
            genos.append(s.model.genotype().to_json())
        os.environ["MDARTS_OPS"] = "auto"
        cells = []
        for a, g in zip(alphas[1:], genos[1:]):
            cells += [f"{float((a - alphas[0]).abs().max()):.2e}", str(g == genos[0])]
        if len(paths) == 2:
            cells = ["-", "-", *cells]
        print(f"| {str(dtype).split('.')[-1]} | {seed} | {float((alphas[0] - init).abs().max()):.2e} | {' | '.join(cells)} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64 if CUDA else 8)
    ap.add_argument("--mode", default="multilevel", choices=["multilevel", "shared"])
    ap.add_argument("--steps", type=int, default=20 if CUDA else 2, help="timed steps per row")
    ap.add_argument("--top", type=int, default=15, help="kernels listed per path")
    ap.add_argument("--numeric-steps", type=int, default=30 if CUDA else 3)
    ap.add_argument("--numeric-arch-lr", type=float, default=3e-3)
    ap.add_argument("--sections", default="variants,profile,numerics")
    ap.add_argument("--tmp", default="/tmp/mdarts-gpu-report")
    ap.add_argument("--data", help="CIFAR-10 folder for the search section")
    ap.add_argument("--search-epochs", type=int, default=2)
    ap.add_argument("--search-steps", type=int, help="cap the steps of each search epoch (dry runs)")
    ap.add_argument("--drift-seeds", type=int, default=5)
    ap.add_argument("--drift-steps", type=int, default=6)
    ap.add_argument("--drift-lr", type=float, default=0.01)
    ap.add_argument("--drift-model", default="16,8" if CUDA else "4,5", help="C,cells of the drift section's supernet")
    ap.add_argument("--best-file", help="where the variants section writes the fastest float32 variant")
    ap.add_argument("--variants", help="the variants section's rows, ';'-separated ('default' first: the α gradients "
                                       "are checked against the first row), instead of all")
    ap.add_argument("--fast", default=os.environ.get("MDARTS_BENCH_FAST", ""),
                    help="variant of the batched path that the profile section uses, e.g. pointwise=dense,channels_last")
    args = ap.parse_args()
    dev = torch.cuda.get_device_name(0) if CUDA else "no CUDA device"
    print(f"# gpu_report: {dev}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    for sec in args.sections.split(","):
        t0 = time.time()
        sections = {"profile": section_profile, "variants": section_variants, "numerics": section_numerics, "search": section_search,
                    "drift": section_drift, "traffic": section_traffic}
        sections[sec](args, args.tmp)
        print(f"({sec}: {time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
