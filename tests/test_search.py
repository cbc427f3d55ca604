"""The search loop: per-epoch derivation and logs, run files, resume, signals, the NaN guard, the CLI."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import mdarts_rs as md
from mdarts_rs.cli import main
from mdarts_rs.search import STEP_STATS, SearchDiverged, Searcher, SearchInterrupted, entropy_loss, run_search

from tinycifar import interrupt_after, tiny_cfg, tiny_images, write_bin


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_images()


def alphas(model):
    return {t: model.alphas.table(t).detach().clone() for t in model.layout.tables}


def test_search_writes_run_files_and_valid_genotypes(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, plots=True)
    result = run_search(cfg, *tiny_data)
    run = cfg.out
    assert json.loads((run / "config.json").read_text())["alpha_mode"] == "multilevel"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for i, line in enumerate(lines):
        rec = json.loads(line)
        assert rec["epoch"] == i
        g = md.MultiLevelGenotype.from_json(rec["genotype"])  # valid: parsing validates it
        assert g == md.load_genotype(run / "genotypes" / f"epoch_{i:03d}.json")
        assert set(rec["skip_connect"]) == set(g.cells)
        assert rec["skip_connect"]["normal_mid"] == g.normal_mid.op_counts()["skip_connect"]
        assert set(rec["entropy"]) == set(g.cells) and all(0 < h <= np.log(8) + 1e-6 for h in rec["entropy"].values())
        assert rec["gap"]["images"] == 8 and 0 <= rec["gap"]["derived_acc"] <= 1
        assert 0 <= rec["train_acc"] <= 1 and np.isfinite(rec["val_loss"])
    assert md.load_genotype(run / "genotype.json") == result.genotype
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["alpha.png", "genotype.png", "skip_connect.png"]
    assert (run / "checkpoint.pt").exists()
    # The learning rate follows the cosine schedule from lr to lr_min over the epochs.
    recs = [json.loads(x) for x in lines]
    assert recs[0]["lr"] == pytest.approx(0.025) and recs[1]["lr"] < recs[0]["lr"]


def test_search_entropy_term_sharpens_alpha(tmp_path, tiny_data):
    """With a large γ the α objective is dominated by the entropy, which falls; with γ = 0 it does not."""
    ent = {}
    for gamma in (0.0, 50.0):
        cfg = tiny_cfg(tmp_path, out=tmp_path / f"g{gamma}", gamma=gamma, arch_lr=0.1, epochs=1, steps_per_epoch=8)
        res = run_search(cfg, *tiny_data)
        ent[gamma] = np.mean(list(res.history[-1]["entropy"].values()))
    assert ent[50.0] < ent[0.0] - 0.05
    assert ent[0.0] > np.log(8) - 0.1


def test_search_entropy_reduction():
    h = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}
    assert entropy_loss(h, "sum").item() == 6.0
    assert entropy_loss(h, "mean").item() == 2.0


def test_search_resume_after_sigint_matches_uninterrupted(tmp_path, tiny_data, monkeypatch):
    full = run_search(tiny_cfg(tmp_path, out=tmp_path / "full"), *tiny_data)

    cfg = tiny_cfg(tmp_path, out=tmp_path / "cut")
    restore = interrupt_after(monkeypatch, 4)  # inside the second epoch
    with pytest.raises(
        SearchInterrupted,
        match=r"SIGINT at epoch 1 after step 1: the last good checkpoint is kept at .*checkpoint.pt; continue with --resume",
    ):
        run_search(cfg, *tiny_data)
    restore()
    state = torch.load(cfg.out / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 1)

    resumed = run_search(dataclasses.replace(cfg, resume=True), *tiny_data)
    assert resumed.genotype == full.genotype
    for t, a in alphas(full.model).items():
        torch.testing.assert_close(alphas(resumed.model)[t], a, rtol=0, atol=0)
    assert [r["train_loss"] for r in resumed.history] == pytest.approx(
        [r["train_loss"] for r in full.history], rel=1e-6
    )


def test_search_refuses_to_overwrite_or_resume_differently(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, epochs=1, steps_per_epoch=1)
    run_search(cfg, *tiny_data)
    with pytest.raises(FileExistsError, match="pass --resume"):
        run_search(cfg, *tiny_data)
    with pytest.raises(ValueError, match=r"different configuration \(gamma: 1.0 -> 2.0\)"):
        run_search(dataclasses.replace(cfg, resume=True, gamma=2.0), *tiny_data)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_search(dataclasses.replace(cfg, out=tmp_path / "other", resume=True), *tiny_data)
    (cfg.out / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"checkpoint.pt: cannot read checkpoint; the file is damaged"):
        run_search(dataclasses.replace(cfg, resume=True), *tiny_data)
    assert json.loads((cfg.out / "metrics.jsonl").read_text())["epoch"] == 0  # finished work is still there


def test_search_nan_guard_keeps_last_good_checkpoint(tmp_path, tiny_data, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    original = Searcher.train_step

    def poisoned(self, *args):
        if self.epoch == 1:
            with torch.no_grad():
                self.model.alphas.table("normal_mid")[0, 0] = float("nan")
        return original(self, *args)

    monkeypatch.setattr(Searcher, "train_step", poisoned)
    with pytest.raises(SearchDiverged, match=r"epoch 1 step 0: the α loss is nan; .*last good checkpoint is kept"):
        run_search(cfg, *tiny_data)
    state = torch.load(cfg.out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 0
    assert torch.isfinite(state["model"]["alphas.alpha_normal_mid"]).all()
    assert len((cfg.out / "metrics.jsonl").read_text().splitlines()) == 1


def test_search_divergence_in_the_weights_keeps_last_good_checkpoint(tmp_path, tiny_data, monkeypatch):
    # A step that leaves the losses finite but a batch-norm statistic infinite (as a huge learning rate or weight
    # decay does): the end of the epoch refuses to write anything, so the last checkpoint stays a good one.
    cfg = tiny_cfg(tmp_path)
    original = Searcher.train_step

    def poisoned(self, *args):
        out = original(self, *args)
        if self.epoch == 1:
            with torch.no_grad():
                self.model.cells[0].preprocess1[2].running_var[0] = float("inf")
        return out

    monkeypatch.setattr(Searcher, "train_step", poisoned)
    with pytest.raises(
        SearchDiverged,
        match=r"epoch 1 step 3: 1 tensors hold NaN or infinite values \(model cells.0.preprocess1.2.running_var\)",
    ):
        run_search(cfg, *tiny_data)
    state = torch.load(cfg.out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert len((cfg.out / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (cfg.out / "genotypes" / "epoch_001.json").exists() and not (cfg.out / "genotype.json").exists()


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_gap_accuracy_leaves_running_statistics_even_for_nan_batches(fast):
    # the gap runs batch norms on batch statistics; a NaN batch (a diverged network's) must not reach the
    # running statistics, which a momentum of 0 would still turn into 1·running + 0·NaN
    from mdarts_rs.search import gap_accuracy
    from mdarts_rs.search.supernet import SuperNet

    model = SuperNet(C=4, layers=5, fast=fast).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.full((4, 3, 32, 32), float("nan"))
    gap_accuracy(model, x, torch.zeros(4, dtype=torch.long), None, None, sparse=False)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_cli_search_huge_learning_rate_leaves_no_non_finite_checkpoint(tmp_path, tiny_data):
    # --lr 1e30: one step leaves huge but finite weights, and the checkpoint holds only finite values (the gap's
    # batch-statistics pass used to write NaN into the running statistics); a second step's loss is NaN, and the
    # run stops without a checkpoint or a genotype and exits 1
    data = write_bin(tmp_path / "cifar", *tiny_data)
    one = tmp_path / "one"
    r = CliRunner().invoke(
        main,
        [
            "search",
            "--data",
            str(data),
            "--out",
            str(one),
            "--no-plots",
            *TINY,
            "--lr",
            "1e30",
            "--steps-per-epoch",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    state = torch.load(one / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    two = tmp_path / "two"
    r = CliRunner().invoke(
        main, ["search", "--data", str(data), "--out", str(two), "--no-plots", *TINY, "--lr", "1e30"]
    )
    assert r.exit_code == 1, r.output
    assert "epoch 0 step 1: the α loss is nan" in r.output
    assert not (two / "genotype.json").exists() and not (two / "checkpoint.pt").exists()


def test_search_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        tiny_cfg(tmp_path, gamma=-1.0)
    with pytest.raises(ValueError, match="at least 5 cells"):
        tiny_cfg(tmp_path, layers=4)
    with pytest.raises(ValueError, match="entropy_reduction"):
        tiny_cfg(tmp_path, entropy_reduction="max")


TINY = "--epochs 1 --batch-size 4 --init-channels 4 --layers 5 --steps-per-epoch 2 --gap-images 8 --workers 1 --device cpu --quiet".split()


def test_cli_search_both_modes_writes_summary_and_comparison(tmp_path, tiny_data):
    data = write_bin(tmp_path / "cifar", *tiny_data)
    out = tmp_path / "both"
    r = CliRunner().invoke(main, ["search", "--alpha-mode", "both", "--data", str(data), "--out", str(out), *TINY])
    assert r.exit_code == 0, r.output
    assert (out / "shared" / "genotype.json").exists() and (out / "multilevel" / "genotype.json").exists()
    assert isinstance(md.load_genotype(out / "shared" / "genotype.json"), md.Genotype)
    rows = json.loads((out / "summary.json").read_text())
    assert [r["alpha_mode"] for r in rows] == ["shared", "multilevel"]
    assert (out / "plots" / "skip_connect_shared_vs_multilevel.png").stat().st_size > 0
    r = CliRunner().invoke(
        main, ["plot", str(out / "shared"), str(out / "multilevel"), "--out", str(tmp_path / "f3.png")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "f3.png").exists()


def test_cli_sweep_writes_table(tmp_path, tiny_data):
    data = write_bin(tmp_path / "cifar", *tiny_data)
    out = tmp_path / "sweep"
    r = CliRunner().invoke(
        main,
        ["sweep", "--gamma", "0,5", "--data", str(data), "--out", str(out), "--no-plots", "--supernet", "plain", *TINY],
    )
    assert r.exit_code == 0, r.output
    assert json.loads((out / "gamma_5" / "config.json").read_text())["supernet"] == "plain"
    rows = json.loads((out / "summary.json").read_text())
    assert [r["gamma"] for r in rows] == [0.0, 5.0]
    assert (out / "gamma_0" / "metrics.jsonl").exists() and (out / "gamma_5" / "genotype.json").exists()
    assert "| gamma_5 | multilevel | 5.0 |" in (out / "summary.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gamma", "-1"], "-1"),
        (["--layers", "4"], "at least 5 cells"),
        (["--portion", "0"], "portion"),
        (["--seeds", "a,b"], "comma-separated integers"),
    ],
)
def test_cli_search_bad_options(tmp_path, tiny_data, args, message):
    data = write_bin(tmp_path / "cifar", *tiny_data)
    r = CliRunner().invoke(main, ["search", "--data", str(data), "--out", str(tmp_path / "x"), *args])
    assert r.exit_code == 2
    assert message in r.output


def test_cli_search_missing_data(tmp_path, monkeypatch):
    monkeypatch.delenv("MDARTS_DATA", raising=False)
    monkeypatch.setenv("MDARTS_CACHE", str(tmp_path / "cache"))
    r = CliRunner().invoke(main, ["search", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--download" in r.output
    r = CliRunner().invoke(main, ["search", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "file not found" in r.output


@pytest.mark.data
def test_cli_quick_search_on_real_subset(tmp_path, cifar_mini):
    out = tmp_path / "quick"
    r = CliRunner().invoke(
        main,
        [
            "search",
            "--preset",
            "quick",
            "--data",
            str(cifar_mini),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--steps-per-epoch",
            "3",
            "--portion",
            "0.02",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["layers"], cfg["init_channels"], cfg["batch_size"], cfg["epochs"]) == (5, 8, 16, 1)
    rec = json.loads((out / "metrics.jsonl").read_text())
    assert rec["epoch"] == 0 and rec["gap"]["images"] == 100
    assert isinstance(md.load_genotype(out / "genotype.json"), md.MultiLevelGenotype)
    assert {p.name for p in (out / "plots").iterdir()} == {"alpha.png", "genotype.png", "skip_connect.png"}


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_search_numeric_options(tmp_path, tiny_data, fast):
    """bf16 autocast computes an α gradient close to float32's, with α kept in float32, and runs the whole loop,
    on the plain and on the batched supernet."""
    grads, losses = {}, {}
    for name, kw in {"fp32": {}, "bf16": {"bf16": True}}.items():
        s = Searcher(
            tiny_cfg(tmp_path, out=tmp_path / name, epochs=1, supernet="batched" if fast else "plain", **kw), *tiny_data
        )
        (xt, yt), (xv, yv) = next(iter(s.train_loader)), next(iter(s.val_loader))
        out = s.train_step(xt, yt, xv, yv)
        grads[name] = torch.cat([a.grad.flatten() for a in s.model.arch_parameters()])
        losses[name] = out["val_loss"]
        assert all(a.dtype == torch.float32 for a in s.model.arch_parameters())
        s.run_epochs()
        assert np.isfinite(s.history[-1]["train_loss"])
    cos = torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0)
    assert cos > 0.95, f"bf16 α gradient has cosine {cos:.3f} with the float32 one"
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)


def test_search_cuda_graph_option_runs_eagerly_without_cuda(tmp_path, tiny_data, capsys):
    if torch.cuda.is_available():
        pytest.skip("this checks the fallback on machines without CUDA")
    plain = run_search(tiny_cfg(tmp_path, out=tmp_path / "a", epochs=1), *tiny_data)
    graph = run_search(tiny_cfg(tmp_path, out=tmp_path / "b", epochs=1, cuda_graph=True), *tiny_data)
    assert "--cuda-graph needs a CUDA device; running the steps eagerly" in capsys.readouterr().out
    for t in plain.model.layout.tables:
        assert torch.equal(plain.model.alphas.table(t), graph.model.alphas.table(t))


def test_resuming_in_the_other_mode_switches_adam(tmp_path, tiny_data):
    """--cuda-graph may change on resuming: Adam follows this run (capturable, step counts on the device for a
    captured step; on the host for eager steps), not the mode the checkpoint was written in."""
    eager = Searcher(tiny_cfg(tmp_path, out=tmp_path / "e"), *tiny_data)
    (xt, yt), (xv, yv) = next(iter(eager.train_loader)), next(iter(eager.val_loader))
    eager.train_step(xt, yt, xv, yv)
    state = eager.state()
    graphed = Searcher(tiny_cfg(tmp_path, out=tmp_path / "g"), *tiny_data)
    graphed.use_graph = True  # as on a CUDA device with --cuda-graph (here the device is the CPU)
    graphed.load_state(state)
    assert all(g["capturable"] for g in graphed.a_opt.param_groups)
    steps = [st["step"] for st in graphed.a_opt.state.values()]
    assert steps and all(t.device == graphed.device and float(t) == 1.0 for t in steps)
    saved_capturable = graphed.state()["a_opt"]
    assert all(g["capturable"] for g in saved_capturable["param_groups"])
    back = Searcher(tiny_cfg(tmp_path, out=tmp_path / "b"), *tiny_data)
    back.load_state({**state, "a_opt": saved_capturable})
    assert not any(g["capturable"] for g in back.a_opt.param_groups)
    assert all(st["step"].device.type == "cpu" for st in back.a_opt.state.values())
    back.train_step(xt, yt, xv, yv)  # non-capturable Adam steps with them


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_search_cuda_graph_step_is_the_eager_step(tmp_path, tiny_data, fast):
    """A replayed step computes the eager step: from the same state (the graph run's, after 3 warm-up steps, the
    capture and a replay, loaded into an eager searcher) and the same batch, the statistics, α, the weights
    and the batch-norm statistics agree up to rounding. cuDNN's deterministic algorithms make both modes run
    the same kernels. (Over many steps float32 rounding differences grow in either mode alike, see the README,
    so whole runs are not compared.)"""
    common = dict(device="cuda", arch_lr=0.01, supernet="batched" if fast else "plain", deterministic=True)
    graphed = Searcher(tiny_cfg(tmp_path, out=tmp_path / "graph", cuda_graph=True, **common), *tiny_data)
    batches = first_epoch_batches(graphed)
    assert len(batches) >= 6
    for b in batches[:5]:
        graphed.graph_step(*b)
    assert graphed.captured.graph is not None, "the step was not captured"
    graphed.flush_device_stats()  # raises if a statistic is not finite
    eager = Searcher(tiny_cfg(tmp_path, out=tmp_path / "eager", **common), *tiny_data)
    eager.load_state(copy.deepcopy(graphed.state()))  # optimizers load state tensors without copying them
    replayed = dict(zip(STEP_STATS, graphed.graph_step(*batches[5]).tolist()))
    stepped = eager.train_step(*batches[5])
    for key, value in replayed.items():
        assert stepped[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert_same_states(graphed, eager, rtol=1e-5, atol=1e-6)


def first_epoch_batches(s: Searcher) -> list[tuple[torch.Tensor, ...]]:
    """The (xt, yt, xv, yv) step batches of the searcher's first epoch."""
    return [(xt, yt, xv, yv) for (xt, yt), (xv, yv) in zip(s.train_loader.batches(0), s.val_loader.batches(0))]


def assert_same_states(a: Searcher, b: Searcher, rtol: float, atol: float) -> None:
    """The two searchers' model states and optimizer states agree within the tolerances; else the error lists the
    tensors that do not, with their largest difference. The weights' momentum buffers (after one step: the
    gradients, for a fresh buffer) and Adam's moments tell a gradient difference from one in the update."""
    states = list(zip(a.model.state_dict().items(), b.model.state_dict().values()))
    for opt, keys in (("w_opt", ("momentum_buffer",)), ("a_opt", ("exp_avg", "exp_avg_sq"))):
        params_a = [q for g in getattr(a, opt).param_groups for q in g["params"]]
        params_b = [q for g in getattr(b, opt).param_groups for q in g["params"]]
        for i, (qa, qb) in enumerate(zip(params_a, params_b)):
            sa, sb = getattr(a, opt).state.get(qa, {}), getattr(b, opt).state.get(qb, {})
            states += [((f"{opt} param {i} {key}", sa[key]), sb[key]) for key in keys if key in sa and key in sb]
    bad: dict[str, list[str]] = {"model": [], "optimizer": []}
    for (name, x), y in states:
        if not torch.allclose(x.double(), y.double(), rtol=rtol, atol=atol):
            diff, size = (x.double() - y.double()).abs().max().item(), x.double().abs().max().item()
            bad["optimizer" if name.endswith(("buffer", "exp_avg", "exp_avg_sq")) else "model"].append(
                f"{name} (largest difference {diff:.2e}, largest |value| {size:.2e})"
            )
    assert not any(bad.values()), "; ".join(
        f"{len(v)} {k} tensors differ: " + "; ".join(v[:6]) for k, v in bad.items() if v
    )


def test_search_eager_step_is_deterministic_on_cpu(tmp_path, tiny_data):
    """Two eager steps of the batched supernet from the same state and batch leave the same model and optimizer
    states; one more step of one of them makes both kinds differ, and the comparison names them."""
    first = Searcher(tiny_cfg(tmp_path, out=tmp_path / "first", arch_lr=0.01, supernet="batched"), *tiny_data)
    batches = first_epoch_batches(first)
    first.train_step(*batches[0])
    second = Searcher(tiny_cfg(tmp_path, out=tmp_path / "second", arch_lr=0.01, supernet="batched"), *tiny_data)
    second.load_state(copy.deepcopy(first.state()))
    first.train_step(*batches[1])
    second.train_step(*batches[1])
    assert_same_states(first, second, rtol=0, atol=0)
    second.train_step(*batches[2])
    with pytest.raises(
        AssertionError, match=r"model tensors differ: .*; \d+ optimizer tensors differ: .*momentum_buffer"
    ):
        assert_same_states(first, second, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_search_cuda_eager_step_is_deterministic(tmp_path, tiny_data):
    """With --deterministic, two eager steps of the batched supernet from the same state and batch leave bitwise
    the same state."""
    common = dict(device="cuda", arch_lr=0.01, supernet="batched", deterministic=True)
    first = Searcher(tiny_cfg(tmp_path, out=tmp_path / "first", **common), *tiny_data)
    batches = first_epoch_batches(first)
    first.train_step(*batches[0])
    second = Searcher(tiny_cfg(tmp_path, out=tmp_path / "second", **common), *tiny_data)
    second.load_state(copy.deepcopy(first.state()))
    first.train_step(*batches[1])
    second.train_step(*batches[1])
    assert_same_states(first, second, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_search_cuda_graph_runs_whole_epochs(tmp_path, tiny_data):
    """run_search with --cuda-graph: two epochs replayed from the graph, finite statistics, a checkpoint."""
    cfg = tiny_cfg(tmp_path, device="cuda", epochs=2, steps_per_epoch=6, supernet="batched", cuda_graph=True)
    result = run_search(cfg, *tiny_data)
    assert [r["epoch"] for r in result.history] == [0, 1]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in result.history)
    assert (cfg.out / "checkpoint.pt").exists()
