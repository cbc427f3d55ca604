"""The step times that docs/protocol.md's cost estimates of the proxy and paper presets rest on: one search step of
the paper's supernet (batched, batch 64, C = 16, 8 cells), and one training step (batch 96, auxiliary head) and one
test batch (256 images) of the paper preset's evaluation network (C = 36, 20 cells) and of the proxy preset's
(C = 16, 8 cells), on DARTS V2's cell. Each checks its loss finite first.

Run: ``pytest benches/bench_protocol_costs.py -s`` (minutes on a CPU: a paper-size search step takes a minute or
more on 2 cores)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mdarts_rs.config import TrainConfig
from mdarts_rs.evaluate.trained import trained_network
from mdarts_rs.genotype import load_genotype

from conftest import searcher

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
ROUNDS = 5 if CUDA else 1


def _timed(benchmark, fn) -> None:
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if benchmark.enabled:
        print(f"\n{benchmark.name}: {benchmark.stats.stats.mean:.3f} s ({DEVICE})")


def test_search_step_paper_size(benchmark):
    s = searcher(64, fast=True, device=str(DEVICE))
    (xt, yt), (xv, yv) = next(iter(s.train_loader)), next(iter(s.val_loader))
    assert np.isfinite(s.train_step(xt, yt, xv, yv)["train_loss"])

    def step():
        s.train_step(xt, yt, xv, yv)
        if CUDA:
            torch.cuda.synchronize()

    _timed(benchmark, step)


@pytest.mark.parametrize(("preset", "channels", "layers"), [("paper", 36, 20), ("proxy", 16, 8)])
@pytest.mark.parametrize("what", ["train_step", "test_batch"])
def test_evaluation_network(benchmark, preset, channels, layers, what):
    cfg = TrainConfig(genotype="darts_v2", init_channels=channels, layers=layers)
    net = trained_network(cfg, load_genotype("darts_v2"), 10, 3, 32).to(DEVICE)
    opt = torch.optim.SGD(net.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    batch = 96 if what == "train_step" else 256
    x, y = torch.randn(batch, 3, 32, 32, device=DEVICE), torch.randint(0, 10, (batch,), device=DEVICE)

    def train_step() -> torch.Tensor:
        net.train()
        logits, aux = net(x)
        loss = F.cross_entropy(logits, y) + cfg.auxiliary_weight * F.cross_entropy(aux, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def test_batch() -> torch.Tensor:
        net.eval()
        with torch.no_grad():
            return F.cross_entropy(net(x)[0], y)

    fn = train_step if what == "train_step" else test_batch
    assert torch.isfinite(fn())
    _timed(benchmark, lambda: (fn(), torch.cuda.synchronize() if CUDA else None))
