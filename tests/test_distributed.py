"""Micro-batches and searches over several processes under torchrun (gloo on the CPU): one search over 2 ranks is
one process's search with ``--micro-batches 2``; SIGTERM on one rank stops both resumably; a sweep spreads its
runs over the ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from distworker import float64_steps, held, worker_cfg
from torch import nn

import mdarts_rs as md
from mdarts_rs.config import SearchConfig
from mdarts_rs.search import Searcher, cross_entropy, entropy_loss, run_search

from tinycifar import tiny_images, write_bin

TESTS = Path(__file__).parent
needs_torchrun = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_images()


@pytest.fixture
def one_thread():
    """The ranks run with one thread each; the reference runs the same way, so that its sums run in their order."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _torchrun(args: list[str], **kw) -> subprocess.Popen:
    """2 processes of ``args`` under torchrun on this machine, one thread each (2 cores)."""
    package_root = str(Path(md.__file__).parents[1])  # the workers import the mdarts_rs this test imports
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([package_root, str(TESTS)])}
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", *args]  # standalone: a free port of its own
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


TINY_CLI = (
    "--batch-size 8 --init-channels 4 --layers 5 --steps-per-epoch 3 --gap-images 8 --workers 1 --device cpu "
    "--quiet --no-plots --arch-lr 0.01 --supernet batched"
).split()


# ---- micro-batches in one process ------------------------------------------------------------------------


def test_micro_batches_one_is_the_plain_first_order_step(tmp_path, tiny_data):
    """``micro_batches = 1`` is DARTS' first-order step, bitwise: an Adam step of α on the whole S_val batch's
    L_val + γ·L_entropy, then a clipped SGD step of the weights on the whole S_train batch."""
    cfg = worker_cfg(tmp_path / "run", micro_batches=1)
    s = Searcher(cfg, *tiny_data)
    model = Searcher(cfg, *tiny_data).model  # the same seed: the same initial weights and α
    alphas, weights = model.arch_parameters(), model.weight_parameters()
    a_opt = torch.optim.Adam(alphas, cfg.arch_lr, betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay)
    w_opt = torch.optim.SGD(weights, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for (xt, yt), (xv, yv) in list(zip(s.train_loader.batches(0), s.val_loader.batches(0)))[:2]:
        stats = s.train_step(xt, yt, xv, yv)
        p, h = model.softmax_entropy()
        loss_v = cross_entropy(model(xv, p, edge_weights=model.edge_weights()), yv)
        for a, g in zip(alphas, torch.autograd.grad(loss_v + cfg.gamma * entropy_loss(h, "sum"), alphas)):
            a.grad = g
        a_opt.step()
        with torch.no_grad():
            p, _ = model.softmax_entropy()
        w_opt.zero_grad(set_to_none=True)
        loss = cross_entropy(model(xt, p, edge_weights=model.edge_weights()), yt)
        loss.backward()
        nn.utils.clip_grad_norm_(weights, cfg.grad_clip)
        w_opt.step()
        assert stats["train_loss"] == loss.item() and stats["val_loss"] == loss_v.item()
    for mine, ref in zip(s.model.parameters(), model.parameters()):
        torch.testing.assert_close(mine, ref, rtol=0, atol=0)


def test_micro_batches_sum_to_the_batch_gradient(tmp_path, tiny_data):
    """A batch made of one half twice has the same batch-norm statistics in each half as in the whole, so 2
    micro-batches must give the whole batch's step (float64): the chunks' gradients are weighted by their share,
    the losses averaged and the correct counts summed."""
    runs = []
    for k in (1, 2):
        s = Searcher(worker_cfg(tmp_path / "run", micro_batches=k, grad_clip=1e9), *tiny_data)
        s.model.double()
        (xt, yt), (xv, yv) = next(iter(s.train_loader)), next(iter(s.val_loader))
        twice = [torch.cat([t[:4], t[:4]]) for t in (xt.double(), yt, xv.double(), yv)]
        stats = [s.train_step(*twice) for _ in range(2)]
        runs.append((stats, [q.detach().clone() for q in s.model.parameters()]))
    (stats1, params1), (stats2, params2) = runs
    for a, b in zip(stats1, stats2):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key
    for x, y in zip(params1, params2):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-10)


def test_micro_batches_refusals(tmp_path, tiny_data):
    with pytest.raises(ValueError, match="micro_batches > 1 with order 2"):
        SearchConfig(micro_batches=2, order=2)
    with pytest.raises(ValueError, match="cuda_graph with micro_batches > 1"):
        SearchConfig(micro_batches=2, cuda_graph=True)
    with pytest.raises(ValueError, match="must not exceed batch_size"):
        SearchConfig(micro_batches=9, batch_size=8)
    cfg = worker_cfg(tmp_path / "run", epochs=1, steps_per_epoch=1, micro_batches=2)
    run_search(cfg, *tiny_data)
    assert json.loads((cfg.out / "config.json").read_text())["micro_batches"] == 2
    with pytest.raises(ValueError, match="micro_batches: 2 -> 1"):
        run_search(worker_cfg(tmp_path / "run", epochs=2, steps_per_epoch=1, resume=True), *tiny_data)


# ---- one search over 2 processes ---------------------------------------------------------------------------


@needs_torchrun
def test_two_processes_are_two_micro_batches(tmp_path, tiny_data, one_thread):
    """2 ranks at batch 8 hold, after 3 float64 steps, the α and weights of one process with 2 micro-batches
    (1e-10); after every epoch of a float32 search both ranks hold the same α and weights (exactly) and derive
    the one-process search's genotype; a weight moved on one rank fails the checksum on both."""
    code, out = _finish(_torchrun([str(TESTS / "distworker.py"), str(tmp_path)]))
    assert code == 0, out[-4000:]

    one = Searcher(worker_cfg(tmp_path / "one", micro_batches=2), *tiny_data)
    float64_steps(one)
    ref = held(one)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"f64_rank{rank}.pt", weights_only=True)
        for key in ("alphas", "weights"):
            for x, y in zip(got[key], ref[key]):
                torch.testing.assert_close(x, y, rtol=0, atol=1e-10)
    start = Searcher(worker_cfg(tmp_path / "one"), *tiny_data)  # α moved: 3 Adam steps of 0.01
    assert max((a - b).abs().max().item() for a, b in zip(ref["alphas"], start.model.arch_parameters())) > 0.02

    result = run_search(worker_cfg(tmp_path / "one32", micro_batches=2), *tiny_data)
    for epoch in (0, 1):
        r0, r1 = (torch.load(tmp_path / f"epoch{epoch}_rank{r}.pt", weights_only=True) for r in (0, 1))
        for key in ("alphas", "weights"):
            for x, y in zip(r0[key], r1[key]):
                assert torch.equal(x, y), key
        assert r0["genotype"] == r1["genotype"] == result.history[epoch]["genotype"]
        assert r0["record"]["train_loss"] == pytest.approx(result.history[epoch]["train_loss"], rel=1e-5)
    for rank in (0, 1):  # rank 1's weights moved by 1e-6: both ranks stop
        assert "ranks hold different α or weights" in (tmp_path / f"disagree_rank{rank}.txt").read_text()


def _worker_pids(launcher: int) -> dict[int, int]:
    """torchrun's workers (children of its process ``launcher``) by rank, read from /proc."""
    pids = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher:
            rank = next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)
            if rank is not None:
                pids[rank] = int(d.name)
    return pids


@needs_torchrun
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' processes in /proc")
def test_sigterm_on_one_rank_stops_both_and_resumes(tmp_path, tiny_data, one_thread):
    """SIGTERM to rank 1 inside the second epoch of a 2-process search: both ranks stop after the same step, rank 0
    writes a resumable checkpoint, and resuming under torchrun ends where one process with 2 micro-batches
    does (α and genotype). Rank 0 alone writes the run folder (rank 1 taking its lock would have failed)."""
    data = write_bin(tmp_path / "cifar", *tiny_data)
    out = tmp_path / "run"
    args = ["-m", "mdarts_rs.cli", "search", "--data", str(data), "--out", str(out), "--epochs", "3", *TINY_CLI]
    proc = _torchrun(args)
    deadline = time.time() + 240
    while not (out / "genotypes" / "epoch_000.json").exists():
        assert proc.poll() is None and time.time() < deadline, _finish(proc)[1][-4000:]
        time.sleep(0.02)
    pids = _worker_pids(proc.pid)
    assert set(pids) == {0, 1}, pids
    os.kill(pids[1], signal.SIGTERM)
    code, log = _finish(proc)
    assert code != 0 and "continue with --resume" in log, log[-4000:]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and state["epoch"] == 1 and state["step"] >= 1, (state["epoch"], state["step"])
    assert json.loads((out / "config.json").read_text())["world_size"] == 2

    code, log = _finish(_torchrun([*args, "--resume"]))
    assert code == 0, log[-4000:]
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",
        "checkpoint.pt",
        "config.json",
        "genotype.json",
        "genotypes",
        "metrics.jsonl",
    ]
    code, log = _finish(_torchrun([*args, "--resume"]))  # finished: rank 0 tells rank 1, nothing runs
    assert code == 0 and log.count("finished earlier, kept") == 1, log[-4000:]
    ref = run_search(worker_cfg(tmp_path / "one", epochs=3, micro_batches=2), *tiny_data)
    assert md.load_genotype(out / "genotype.json") == ref.genotype
    resumed = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    alphas = {k: v for k, v in ref.model.state_dict().items() if k.startswith("alphas.")}
    assert alphas
    for name, a in alphas.items():
        torch.testing.assert_close(resumed[name], a, rtol=0, atol=1e-6)


@needs_torchrun
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' processes in /proc")
def test_kill_9_of_one_rank_is_said_by_the_other_without_a_traceback(tmp_path, tiny_data):
    """kill -9 of rank 1 inside a 2-process search: rank 0, waiting for it in a collective, says which rank was lost
    and that --resume continues, in a line (gloo's own error was its text, and other collectives' a traceback)."""
    data = write_bin(tmp_path / "cifar", *tiny_data)
    out = tmp_path / "run"
    proc = _torchrun(
        ["-m", "mdarts_rs.cli", "search", "--data", str(data), "--out", str(out), "--epochs", "3", *TINY_CLI]
    )
    deadline = time.time() + 240
    while not (out / "genotypes" / "epoch_000.json").exists():
        assert proc.poll() is None and time.time() < deadline, _finish(proc)[1][-4000:]
        time.sleep(0.02)
    os.kill(_worker_pids(proc.pid)[1], signal.SIGKILL)
    code, log = _finish(proc)
    assert code != 0, log[-4000:]
    assert "Error: rank 0 of 2: lost rank 1 of this torchrun job" in log, log[-4000:]
    assert f"the last good checkpoint is kept at {out / 'checkpoint.pt'}; continue with --resume" in log, log[-4000:]
    assert "mdarts_rs/" not in log and "GLHF" not in log, log[-4000:]  # torchrun's own report is its business


# ---- a sweep over 2 processes ------------------------------------------------------------------------------


@needs_torchrun
def test_sweep_over_two_processes(tmp_path, tiny_data, one_thread):
    """4 runs over 2 ranks, one made to fail (its folder holds another run's file): the other 3 derive what they
    derive run one by one, and rank 0's summary lists them and the failure."""
    data = write_bin(tmp_path / "cifar", *tiny_data)
    out = tmp_path / "sweep"
    (out / "gamma_2").mkdir(parents=True)
    (out / "gamma_2" / "metrics.jsonl").write_text("{}\n")  # another run's file: refused without --overwrite
    gammas = ["0", "0.5", "1", "2"]
    args = ["-m", "mdarts_rs.cli", "sweep", "--gamma", ",".join(gammas), "--data", str(data), "--out", str(out)]
    code, log = _finish(_torchrun([*args, "--epochs", "1", *TINY_CLI]))
    assert code != 0 and "1 of 4 runs" in log and "gamma_2: " in log and "holds another run" in log, log[-4000:]
    rows = json.loads((out / "summary.json").read_text())
    assert [r["run"] for r in rows] == ["gamma_0", "gamma_0.5", "gamma_1"]
    for g in (0.0, 0.5, 1.0):
        ref = run_search(worker_cfg(tmp_path / f"one_{g:g}", epochs=1, gamma=g), *tiny_data)
        assert md.load_genotype(out / f"gamma_{g:g}" / "genotype.json") == ref.genotype


def test_cli_refuses_cuda_graph_under_torchrun(tmp_path, tiny_data, monkeypatch):
    """A search started by torchrun (WORLD_SIZE > 1) with --cuda-graph is refused before joining the group."""
    from click.testing import CliRunner

    from mdarts_rs.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    data = write_bin(tmp_path / "cifar", *tiny_data)
    r = CliRunner().invoke(
        main, ["search", "--data", str(data), "--out", str(tmp_path / "x"), "--cuda-graph", *TINY_CLI]
    )
    assert r.exit_code == 2 and "--cuda-graph is not supported under torchrun" in r.output, r.output
