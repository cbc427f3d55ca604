"""The DARTS-family options of the search: second-order α gradient (DARTS), partial channels with edge
normalisation (PC-DARTS), α warm-up and the skip_connect cap (P-DARTS)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import mdarts_rs as md
from mdarts_rs.cli import main
from mdarts_rs.primitives import channel_shuffle
from mdarts_rs.search import Searcher, SearchInterrupted, batch_statistics, entropy_loss, run_search
from mdarts_rs.search.step import arch_loss, unrolled_arch_gradients
from mdarts_rs.search.supernet import SearchCell, SuperNet, node_edge_softmax

from tinycifar import tiny_cfg, tiny_images, write_bin


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_images()


def arch_state(model: SuperNet) -> list[torch.Tensor]:
    return [a.detach().clone() for a in model.arch_parameters()]


# ---- second-order α gradient --------------------------------------------------------------------------


def exact_unrolled_gradient(s: Searcher, xt, yt, xv, yv) -> list[torch.Tensor]:
    """∇_α [L_val(w'(α), α) + γ·L_entropy(α)] by double backward through one unrolled SGD step
    w'(α) = w − ξ·(μ·m + ∇_w L_train(w, α) + λ·w): the quantity DARTS' finite difference approximates."""
    model, cfg = s.model, s.cfg
    named = [(n, q) for n, q in model.named_parameters() if not n.startswith("alphas.")]
    arch = model.arch_parameters()
    xi = s.w_opt.param_groups[0]["lr"]
    with batch_statistics(model):
        p, _ = model.softmax_entropy()
        loss_t = F.cross_entropy(model(xt, p, edge_weights=model.edge_weights()), yt)
        g = torch.autograd.grad(loss_t, [q for _, q in named], create_graph=True)
        unrolled = {}
        for (n, w), gw in zip(named, g):
            m = s.w_opt.state[w]["momentum_buffer"]
            unrolled[n] = w - xi * (cfg.momentum * m + gw + cfg.weight_decay * w)
        p, h = model.softmax_entropy()
        logits = torch.func.functional_call(model, unrolled, (xv, p), {"edge_weights": model.edge_weights()})
        loss = F.cross_entropy(logits, yv) + cfg.gamma * entropy_loss(h, cfg.entropy_reduction)
        return list(torch.autograd.grad(loss, arch))


@pytest.mark.parametrize(("alpha_mode", "fast", "partial"), [("multilevel", False, 1), ("shared", True, 2)])
def test_second_order_gradient_matches_double_backward(tmp_path, tiny_data, monkeypatch, alpha_mode, fast, partial):
    """In float64 with the reference ops, DARTS' finite-difference α gradient agrees with the exact one.

    Central differences err by (ε‖v‖)²/6 times a third derivative where the function is smooth, plus a
    rounding error of about 1e-16/ε; but this network is only piecewise smooth (ReLU, max pooling), and
    ∇_α L_train jumps wherever w ± ε·v crosses a kink. At DARTS' ε = 0.01/‖v‖ the ±ε segment crosses kinks
    (measured on this test's network: the gradient off by 1 to 9 times its size; on 32×32 inputs kinks are
    still crossed at 1e-6/‖v‖); on 8×8 inputs at ε = 1e-6/‖v‖ none is, and the two agree to 1e-6 relative
    (measured 2e-9 to 4e-9)."""
    monkeypatch.setenv("MDARTS_OPS", "ref")
    cfg = tiny_cfg(
        tmp_path,
        alpha_mode=alpha_mode,
        supernet="batched" if fast else "plain",
        partial_channels=partial,
        order=2,
        gamma=0.5,
        lr=0.1,
        batch_size=8,
    )
    s = Searcher(cfg, *tiny_data)
    s.model.double()
    g = torch.Generator().manual_seed(0)
    xt, xv = (torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    yt, yv = (torch.randint(0, 10, (4,), generator=g) for _ in range(2))
    s.train_step(xt, yt, xv, yv)  # a second-order step, which leaves SGD momentum buffers
    assert all(torch.count_nonzero(st["momentum_buffer"]) > 0 for st in s.w_opt.state.values())
    got, _ = unrolled_arch_gradients(s.parts, xt, yt, xv, yv, fd_step=1e-6)
    want = exact_unrolled_gradient(s, xt, yt, xv, yv)
    assert len(got) == len(s.model.arch_parameters()) == len(s.model.layout.tables) * (2 if partial > 1 else 1)
    for g, w in zip(got, want):
        assert float((g - w).norm()) <= 1e-6 * float(w.norm())
    # The second-order term matters: the first-order gradient is another vector.
    first = torch.autograd.grad(arch_loss(s.parts, xv, yv)[0], s.model.arch_parameters())
    assert max(float((f - w).norm() / w.norm()) for f, w in zip(first, want)) > 1e-3


def test_second_order_search_runs_and_resumes(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, order=2, epochs=1)
    result = run_search(cfg, *tiny_data)
    assert isinstance(result.genotype, md.MultiLevelGenotype)
    assert json.loads((cfg.out / "config.json").read_text())["order"] == 2
    first = run_search(tiny_cfg(tmp_path, out=tmp_path / "first", epochs=1), *tiny_data)
    assert any(not torch.equal(a, b) for a, b in zip(arch_state(result.model), arch_state(first.model)))
    with pytest.raises(ValueError, match=r"different configuration \(order: 2 -> 1\)"):
        run_search(dataclasses.replace(cfg, resume=True, order=1), *tiny_data)


# ---- partial channels and edge normalisation ----------------------------------------------------------


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def pc_darts_cell_reference(cell: SearchCell, s0, s1, p, beta_w, k: int) -> torch.Tensor:
    """A PC-DARTS cell written edge by edge: each edge's mixed op on the first C/K channels, the rest
    appended (2×2 max-pooled on a reduction's stride-2 edges), the edge's output channel-shuffled, then
    weighted by its edge weight and summed into its node."""
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    for node, row in enumerate(cell.rows):
        total = 0
        for j, e in enumerate(row):
            h = states[j]
            c = h.shape[1] // k
            mixed = sum(p[e, o] * op(h[:, :c]) for o, op in enumerate(cell.edges[e].ops) if o > 0)
            rest = h[:, c:]
            if cell.reduction and j < 2:
                rest = F.max_pool2d(rest, 2, 2)
            out = torch.cat([mixed, rest], dim=1)
            b, ch, hh, ww = out.shape
            shuffled = torch.stack([out[:, g * (ch // k) : (g + 1) * (ch // k)] for g in range(k)], dim=2)
            total = total + beta_w[e] * shuffled.reshape(b, ch, hh, ww)
        states.append(total)
    return torch.cat(states[2:], dim=1)


@pytest.mark.parametrize("reduction", [False, True])
def test_partial_channel_cell_matches_edge_by_edge_reference(reduction):
    torch.manual_seed(0)
    k = 4
    cell = SearchCell(8, 8, 8, reduction, False, partial=k).double()
    s0, s1 = torch.randn(2, 8, 8, 8, dtype=torch.float64), torch.randn(2, 8, 8, 8, dtype=torch.float64)
    p = torch.softmax(torch.randn(14, 8, dtype=torch.float64), 1)
    beta_w = node_edge_softmax(torch.randn(14, dtype=torch.float64))
    got = cell(s0, s1, p, edge_weights=beta_w)
    want = pc_darts_cell_reference(cell, s0, s1, p, beta_w, k)
    assert got.shape == ((2, 32, 4, 4) if reduction else (2, 32, 8, 8))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_edge_normalisation_sums_to_one_per_node():
    w = node_edge_softmax(torch.randn(14))
    sums = [float(w[a:b].sum()) for a, b in ((0, 2), (2, 5), (5, 9), (9, 14))]
    assert sums == pytest.approx([1.0] * 4)


@pytest.mark.parametrize("alpha_mode", ["multilevel", "shared"])
def test_partial_channels_batched_cell_matches_plain(alpha_mode):
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    plain = SuperNet(C=8, layers=5, alpha_mode=alpha_mode, partial_channels=4, seed=3).double()
    fast = SuperNet(C=8, layers=5, alpha_mode=alpha_mode, partial_channels=4, seed=3, fast=True).double()
    yp, yf = plain(x), fast(x)
    torch.testing.assert_close(yf, yp, rtol=1e-10, atol=1e-12)
    yp.square().sum().backward()
    yf.square().sum().backward()
    assert len(plain.arch_parameters()) == 2 * len(plain.layout.tables)  # α and β tables
    for a, b in zip(plain.arch_parameters(), fast.arch_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-8, atol=1e-12)


def test_partial_channels_one_is_darts_supernet():
    a, b = SuperNet(C=4, layers=5, seed=1), SuperNet(C=4, layers=5, seed=1, partial_channels=1)
    sa, sb = a.state_dict(), b.state_dict()  # once each: a supernet's state_dict takes tens of ms
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.edge_weights() is None and len(b.arch_parameters()) == 5
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(a(x), b(x))


def test_derivation_weighs_edges_by_edge_normalisation():
    net = SuperNet(C=4, layers=5, alpha_mode="shared", partial_channels=2, seed=0)
    with torch.no_grad():
        for t in ("normal", "reduce"):
            net.alphas.table(t).zero_()
            net.alphas.table(t)[:, md.PRIMITIVES.index("sep_conv_3x3")] = 1.0  # every edge equally strong
            beta = net.alphas.beta(t)
            beta.zero_()
            beta[[1, 2, 7, 13]] = 5.0  # one favourite input per node
    g = net.genotype()
    for cell in g.cells.values():
        # the favourite first, then ties to the lowest input
        assert [j for _, j in cell.edges] == [1, 0, 0, 1, 2, 0, 4, 0]
    assert net.genotype(edge_weights={t: torch.ones(14) for t in ("normal", "reduce")}).normal.edges[0][1] == 0


def test_partial_channel_search_runs(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, partial_channels=2, alpha_mode="shared", epochs=1)
    result = run_search(cfg, *tiny_data)
    assert isinstance(result.genotype, md.Genotype)
    state = torch.load(cfg.out / "checkpoint.pt", weights_only=True)
    assert {"alphas.beta_normal", "alphas.beta_reduce"} <= set(state["model"])
    assert not torch.equal(state["model"]["alphas.beta_normal"], torch.zeros(14))
    with pytest.raises(ValueError, match="partial_channels = 3 must be positive and divide init_channels = 4"):
        tiny_cfg(tmp_path, partial_channels=3)


# ---- α warm-up ---------------------------------------------------------------------------------------


class ArchRecorder:
    """Keeps α (and whether Adam holds a state) at the end of every epoch."""

    def __init__(self) -> None:
        self.searcher: Searcher | None = None
        self.arch: list[list[torch.Tensor]] = []

    def save_checkpoint(self, state):
        pass

    def end_epoch(self, record, genotype, history):
        assert self.searcher is not None
        self.arch.append(arch_state(self.searcher.model))

    def describe(self):
        return "nowhere"


def test_warm_up_freezes_alpha_then_moves_it(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, epochs=3, arch_start_epoch=2)
    rec = ArchRecorder()
    s = Searcher(cfg, *tiny_data, recorder=rec)
    rec.searcher = s
    start = arch_state(s.model)
    first_weights = [w.detach().clone() for w in s.model.weight_parameters()]
    s.run_epochs()
    for epoch in (0, 1):
        assert all(torch.equal(a, b) for a, b in zip(rec.arch[epoch], start)), f"α moved in epoch {epoch}"
    assert all(not torch.equal(a, b) for a, b in zip(rec.arch[2], start))
    assert any(not torch.equal(a, b) for a, b in zip(s.model.weight_parameters(), first_weights))
    for r in s.history:  # the α loss is still reported while α waits
        assert np.isfinite(r["val_loss"]) and 0 <= r["val_acc"] <= 1 and r["entropy_loss"] > 0
    with pytest.raises(ValueError, match=r"arch_start_epoch must be in \[0, epochs = 3\], got 4"):
        tiny_cfg(tmp_path, epochs=3, arch_start_epoch=4)
    with pytest.raises(ValueError, match="cuda_graph with arch_start_epoch > 0 is not supported"):
        tiny_cfg(tmp_path, arch_start_epoch=1, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph with order 2 is not supported"):
        tiny_cfg(tmp_path, order=2, cuda_graph=True)


def test_resume_inside_the_warm_up_matches_uninterrupted(tmp_path, tiny_data, monkeypatch):
    kw = dict(epochs=3, arch_start_epoch=2, steps_per_epoch=2)
    full = run_search(tiny_cfg(tmp_path, out=tmp_path / "full", **kw), *tiny_data)
    cfg = tiny_cfg(tmp_path, out=tmp_path / "cut", **kw)
    original = Searcher.train_step
    calls = {"n": 0}

    def step_then_interrupt(self, *args):
        out = original(self, *args)
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 1, the warm-up's second epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Searcher, "train_step", step_then_interrupt)
    with pytest.raises(SearchInterrupted, match="SIGTERM at epoch 1 after step 1"):
        run_search(cfg, *tiny_data)
    monkeypatch.setattr(Searcher, "train_step", original)
    resumed = run_search(dataclasses.replace(cfg, resume=True), *tiny_data)
    assert resumed.genotype == full.genotype
    for a, b in zip(arch_state(resumed.model), arch_state(full.model)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- the skip_connect cap ----------------------------------------------------------------------------


def test_max_skip_caps_normal_cells_only():
    w = np.full((14, 8), 0.01)
    w[:, md.PRIMITIVES.index("skip_connect")] = 0.9
    w[:, md.PRIMITIVES.index("sep_conv_3x3")] = 0.5
    g = md.derive_genotype({"normal": w, "reduce": w}, max_skip=2)
    assert g.normal.op_counts()["skip_connect"] == 2 and g.normal.op_counts()["sep_conv_3x3"] == 6
    assert g.reduce.op_counts()["skip_connect"] == 8
    assert md.derive_genotype({"normal": w, "reduce": w}) == md.derive_genotype({"normal": w, "reduce": w}, max_skip=8)
    assert md.derive_cell(w, "normal", max_skip=0).op_counts()["skip_connect"] == 0


def test_search_with_max_skip_derives_capped_genotypes(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, max_skip=0, epochs=1, steps_per_epoch=1)
    s = Searcher(cfg, *tiny_data)
    with torch.no_grad():  # α that prefers skip_connect everywhere
        for a in s.model.arch_parameters():
            a[:, md.PRIMITIVES.index("skip_connect")] += 3.0
    result = s.run_epochs()
    for table, cell in result.genotype.cells.items():
        n = cell.op_counts()["skip_connect"]
        assert n == 0 if table.startswith("normal") else n > 0
    assert s.history[0]["skip_connect"]["normal_low"] == 0
    assert s.history[0]["skip_connect"]["reduce_low"] > 0


def test_cli_darts_family_options(tmp_path, tiny_data):
    data = write_bin(tmp_path / "cifar", *tiny_data)
    tiny = ["--epochs", "2", "--batch-size", "4", "--init-channels", "4", "--layers", "5", "--steps-per-epoch", "2"]
    tiny += ["--gap-images", "8", "--workers", "1", "--no-plots", "--quiet", "--device", "cpu"]
    out = tmp_path / "so"
    args = ["--order", "2", "--arch-start-epoch", "1", "--max-skip", "2"]
    r = CliRunner().invoke(main, ["search", "--data", str(data), "--out", str(out), *args, *tiny])
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "config.json").read_text())
    assert (saved["order"], saved["arch_start_epoch"], saved["max_skip"]) == (2, 1, 2)
    out = tmp_path / "pc"
    r = CliRunner().invoke(
        main, ["sweep", "--gamma", "0", "--partial-channels", "2", "--data", str(data), "--out", str(out), *tiny]
    )
    assert r.exit_code == 0, r.output
    assert json.loads((out / "gamma_0" / "config.json").read_text())["partial_channels"] == 2
    for bad, message in ((["--order", "3"], "--order"), (["--max-skip", "9"], "--max-skip")):
        r = CliRunner().invoke(main, ["search", "--data", str(data), "--out", str(tmp_path / "x"), *bad])
        assert r.exit_code == 2 and message in r.output
