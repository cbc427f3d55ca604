"""The CPU search step of two checkouts of mdarts-rs side by side: each round runs one process per checkout (which
goes first alternates), each timing the same steps of ``Searcher.train_step`` on one fixed batch after a warm-up;
prints the medians per checkout and their ratio, for both supernets and both α layouts.

Run: ``python benches/compare_step_versions.py BEFORE AFTER [ROUNDS] [STEPS]`` with two checkouts' roots (each
with its built extension in ``python/mdarts_rs``), e.g. a ``git worktree`` of the earlier commit."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time, numpy as np
from mdarts_rs.config import SearchConfig
from mdarts_rs.search import Searcher
supernet, mode, batch, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fields = set(SearchConfig.__dataclass_fields__)
kind = {"fast": supernet == "batched"} if "fast" in fields else {"supernet": supernet}  # versions before 2026-12-06
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (4 * batch, 3, 32, 32), dtype=np.uint8)
y = rng.integers(0, 10, 4 * batch).astype(np.int64)
cfg = SearchConfig(batch_size=batch, workers=1, quiet=True, plots=False, gap_images=8, device="cpu",
                   alpha_mode=mode, **kind)
s = Searcher(cfg, x, y)
(xt, yt), (xv, yv) = next(iter(s.train_loader)), next(iter(s.val_loader))
s.train_step(xt, yt, xv, yv)
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    s.train_step(xt, yt, xv, yv)
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""

CASES = [(supernet, mode) for supernet in ("batched", "plain") for mode in ("multilevel", "shared")]


def main() -> None:
    before, after = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    trees = {"before": before, "after": after}
    times: dict[tuple[str, tuple[str, str]], list[float]] = {(t, c): [] for t in trees for c in CASES}
    for r in range(rounds):
        for case in CASES:
            for name in list(trees) if r % 2 == 0 else list(trees)[::-1]:
                env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.join(trees[name], "python")}
                args = [sys.executable, "-c", CHILD, *case, "8", str(steps)]
                out = subprocess.run(args, env=env, capture_output=True, text=True, cwd=trees[name])
                if out.returncode:
                    sys.exit(f"{trees[name]}: {out.stderr[-2000:]}")
                times[(name, case)] += json.loads(out.stdout.strip().splitlines()[-1])
    for case in CASES:
        b, a = (statistics.median(times[(t, case)]) * 1e3 for t in ("before", "after"))
        n = len(times[("after", case)])
        print(
            f"{case[0]:8s} {case[1]:10s} batch 8: before {b:7.1f} ms  after {a:7.1f} ms  after/before {a / b:.3f} ({n})"
        )


if __name__ == "__main__":
    main()
