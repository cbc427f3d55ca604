"""Training evaluation networks: the CLI, resume equivalence, DDP under torchrun, and learning on real data."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import mdarts_rs as md
from mdarts_rs import evaluate
from mdarts_rs.cli import main
from mdarts_rs.config import TrainConfig
from mdarts_rs.data import CifarLoader, load_cifar10
from mdarts_rs.evaluate import Trainer, shard_indices
from mdarts_rs.evaluate.network import eval_network

from published import DARTS_V2
from tinycifar import tiny_train_cfg


def write_records(path, images, labels):
    rec = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(labels), -1)], axis=1)
    path.write_bytes(rec.tobytes())


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    write_records(
        root / "data_batch_1.bin", rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 64)
    )
    write_records(
        root / "test_batch.bin", rng.integers(0, 256, (24, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 24)
    )
    (root / "genotype.txt").write_text(DARTS_V2)
    return root


def tiny_cfg(root, out, **kw) -> TrainConfig:
    return tiny_train_cfg(out, **{"genotype": str(root / "genotype.txt"), "data": root, **kw})


TINY = "--epochs 2 --batch-size 8 --init-channels 4 --layers 5 --steps-per-epoch 2 --workers 1 --device cpu --quiet".split()


def test_cli_train_and_test(tmp_path, fake_cifar):
    out = tmp_path / "run"
    r = CliRunner().invoke(
        main,
        ["train", "--genotype", str(fake_cifar / "genotype.txt"), "--data", str(fake_cifar), "--out", str(out), *TINY],
    )
    assert r.exit_code == 0, r.output
    assert "top-1 error" in r.output
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1] and lines[0]["test_images"] == 24
    assert 0 <= lines[-1]["top1_err"] <= 1 and lines[-1]["top5_err"] <= lines[-1]["top1_err"]
    assert (out / "learning_curves.png").stat().st_size > 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["auxiliary_weight"], cfg["cutout"], cfg["drop_path"], cfg["lr"]) == (0.4, 16, 0.2, 0.025)
    r = CliRunner().invoke(
        main, ["test", "--checkpoint", str(out / "checkpoint.pt"), "--data", str(fake_cifar), "--device", "cpu"]
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["test_images"] == 24 and res["top1_err"] == pytest.approx(lines[-1]["top1_err"])
    # the folder now holds a run: a second training is refused, unless it replaces it
    args = [
        "train",
        "--genotype",
        str(fake_cifar / "genotype.txt"),
        "--data",
        str(fake_cifar),
        "--out",
        str(out),
        *TINY,
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "holds another run" in r.output and "--overwrite" in r.output
    r = CliRunner().invoke(main, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["overwrite"] is True


def test_cli_train_rejects_bad_input(tmp_path, fake_cifar):
    bad = tmp_path / "bad.json"
    bad.write_text('{"alpha_mode": "shared", "cells": {}}')
    r = CliRunner().invoke(
        main, ["train", "--genotype", str(bad), "--data", str(fake_cifar), "--out", str(tmp_path / "x"), *TINY]
    )
    assert r.exit_code == 1 and "bad.json" in r.output and "cells.normal: missing" in r.output
    r = CliRunner().invoke(
        main,
        [
            "train",
            "--genotype",
            str(fake_cifar / "genotype.txt"),
            "--data",
            str(fake_cifar),
            "--out",
            str(tmp_path / "y"),
            "--drop-path",
            "1.5",
        ],
    )
    assert r.exit_code == 2


def test_train_resume_matches_uninterrupted(tmp_path, fake_cifar, monkeypatch):
    full_cfg = tiny_cfg(fake_cifar, tmp_path / "full")
    full = evaluate.train(full_cfg)
    cfg = tiny_cfg(fake_cifar, tmp_path / "cut")
    original = Trainer.train_epoch

    def stop_at_second_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", stop_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        evaluate.train(cfg)
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = evaluate.train(dataclasses.replace(cfg, resume=True))
    assert [r["train_loss"] for r in resumed] == pytest.approx([r["train_loss"] for r in full], rel=1e-6)
    a = torch.load(full_cfg.out / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(cfg.out / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_ddp_two_gloo_processes_match_one_process(tmp_path, fake_cifar):
    """2 ranks × 4 images per step under torchrun (gloo, CPU) give the weights of one process that averages
    the gradients of the same two shards (DDP's semantics; BN statistics are per rank in both)."""
    out = tmp_path / "ddp"
    args = [
        "--genotype",
        str(fake_cifar / "genotype.txt"),
        "--data",
        str(fake_cifar),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--init-channels",
        "4",
        "--layers",
        "5",
        "--steps-per-epoch",
        "2",
        "--workers",
        "1",
        "--device",
        "cpu",
        "--quiet",
        "--drop-path",
        "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on a 2-core machine
    r = subprocess.run(
        [
            "torchrun",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            "-m",
            "mdarts_rs.cli",
            "train",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ddp = torch.load(out / "checkpoint.pt", weights_only=True)

    cfg = tiny_cfg(fake_cifar, tmp_path / "ref", epochs=1, drop_path=0.0)
    (x, y), _ = load_cifar10(fake_cifar, "train"), None
    torch.manual_seed(cfg.seed)
    model = eval_network(md.load_genotype(cfg.genotype), "cifar10", cfg.init_channels, cfg.layers, True, 0.0, 10)
    opt = torch.optim.SGD(model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    loaders = [
        iter(
            CifarLoader(
                x,
                y,
                shard_indices(len(y), cfg.seed, r, 2),
                batch_size=4,
                cutout=cfg.cutout,
                seed=cfg.seed + r,
                workers=1,
            )
        )
        for r in range(2)
    ]
    model.train()
    losses = []
    for step in range(2):
        for g in opt.param_groups:
            g["lr"] = evaluate.lr_at(cfg, step / 2)
        opt.zero_grad()
        for it in loaders:
            xb, yb = next(it)
            logits, aux = model(xb)
            loss = F.cross_entropy(logits, yb) + 0.4 * F.cross_entropy(aux, yb)
            (loss / 2).backward()
            losses.append(float(loss.detach()) * len(yb))
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    for k, v in model.state_dict().items():
        if "running" in k or "num_batches" in k:
            continue  # BN running statistics are rank 0's own in DDP
        # Summation order differs (threads, all-reduce) and batch-norm over 4 images amplifies it, so the
        # tolerance is on each tensor's relative norm.
        diff, norm = (ddp["model"][k].float() - v.float()).norm().item(), v.float().norm().item()
        assert diff <= 1e-3 * norm + 1e-4, f"{k}: difference {diff:.2e} for a tensor of norm {norm:.2e}"
    assert ddp["history"][0]["train_loss"] == pytest.approx(sum(losses) / 16, rel=1e-4)


@pytest.mark.data
def test_train_one_short_epoch_on_real_data_lowers_the_loss(tmp_path, cifar_mini):
    x, y = load_cifar10(cifar_mini, "train")
    xt, yt = load_cifar10(cifar_mini, "test")
    data = ((x[:2048], y[:2048]), (xt[:512], yt[:512]))
    cfg = TrainConfig(
        genotype=DARTS_V2,
        data=cifar_mini,
        out=tmp_path / "real",
        epochs=1,
        batch_size=32,
        init_channels=8,
        layers=5,
        lr=0.05,
        cutout=0,
        drop_path=0.0,
        steps_per_epoch=48,
        workers=2,
        device="cpu",
        quiet=True,
    )
    trainer = evaluate.build_trainer(cfg, data)
    before = evaluate.evaluate_network(trainer.model, iter(trainer.test_batches), trainer.device)
    history = trainer.run_epochs()
    assert history[0]["test_loss"] < before["test_loss"] - 0.05
    assert history[0]["top1_err"] < 0.85


def test_train_imagenet_recipe_on_a_tiny_image_folder(tmp_path):
    """The ImageNet path end to end on a 3-class ImageFolder of a few images: recipe defaults, the
    linear schedule with warm-up, label smoothing, and top-5 error."""
    pytest.importorskip("torchvision", reason="ImageNet training reads ImageFolder directories with torchvision")
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in range(3):
            d = tmp_path / "imagenet" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    out = tmp_path / "run"
    r = CliRunner().invoke(
        main,
        [
            "train",
            "--dataset",
            "imagenet",
            "--genotype",
            DARTS_V2,
            "--data",
            str(tmp_path / "imagenet"),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--warmup-epochs",
            "1",
            "--batch-size",
            "4",
            "--init-channels",
            "4",
            "--layers",
            "5",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["lr_schedule"], cfg["label_smoothing"], cfg["weight_decay"]) == ("linear", 0.1, 3e-5)
    hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["test_images"] for h in hist] == [6, 6]
    # 3 steps per epoch; the logged rate is the last step's: warm-up lr·(e + 1)/(w + 1), then lr·(1 − t).
    assert hist[0]["lr"] == pytest.approx(0.5 * (2 / 3 + 1) / 2)
    assert hist[1]["lr"] == pytest.approx(0.5 * (1 - 2 / 3))
    assert hist[-1]["top5_err"] == 0.0  # 3 classes: the true class is always among the top 5


def test_train_divergence_writes_no_checkpoint_and_says_so(tmp_path, fake_cifar):
    # --lr 1e30 and a huge weight decay: the weights leave the finite numbers within an epoch; nothing is written
    cfg = tiny_cfg(fake_cifar, tmp_path / "run", epochs=1, steps_per_epoch=1, lr=1e30, weight_decay=1e10)
    with pytest.raises(FloatingPointError, match=r"epoch 0: the training diverged .*no checkpoint was written"):
        evaluate.train(cfg)
    assert not (cfg.out / "checkpoint.pt").exists() and not (cfg.out / "metrics.jsonl").exists()


def test_train_holds_its_run_folder_and_resumes_only_the_same_data(tmp_path, fake_cifar):
    from mdarts_rs.run import RunFolder, RunFolderBusy

    cfg = tiny_cfg(fake_cifar, tmp_path / "run", epochs=1)
    with RunFolder(cfg.out).writer():
        with pytest.raises(RunFolderBusy, match=f"PID {os.getpid()}"):
            evaluate.train(cfg)
    evaluate.train(cfg)
    # resuming with other images is refused
    other = tmp_path / "other"
    shutil.copytree(fake_cifar, other)
    data = bytearray((other / "data_batch_1.bin").read_bytes())
    data[1] ^= 1
    (other / "data_batch_1.bin").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="cannot resume with other data: the run trained on 64 images"):
        evaluate.train(dataclasses.replace(cfg, data=other, resume=True, epochs=1))
    # the genotype by another path resumes; another genotype is refused, naming both
    same = tmp_path / "same.txt"
    shutil.copy(cfg.genotype, same)
    evaluate.train(dataclasses.replace(cfg, genotype=str(same), resume=True))
    with pytest.raises(
        ValueError, match="cannot resume with a different genotype: DARTS_V1 is not the cell this run trained"
    ):
        evaluate.train(dataclasses.replace(cfg, genotype="DARTS_V1", resume=True))


def test_cli_test_with_a_checkpoint_that_does_not_fit_says_so(tmp_path, fake_cifar):
    cfg = tiny_cfg(fake_cifar, tmp_path / "run", epochs=1)
    evaluate.train(cfg)
    state = torch.load(cfg.out / "checkpoint.pt", weights_only=True)
    for name, broken in (("nogeno", {**state, "genotype": None}), ("wrong", {**state, "model": {"x": torch.zeros(1)}})):
        torch.save(broken, tmp_path / f"{name}.pt")
        r = CliRunner().invoke(main, ["test", "--checkpoint", str(tmp_path / f"{name}.pt"), "--data", str(fake_cifar)])
        assert r.exit_code == 1 and f"{name}.pt:" in r.output and "Traceback" not in r.output, r.output
