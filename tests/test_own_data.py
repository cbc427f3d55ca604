"""Searching and training on one's own images through the CLI: a generated folder of three easily separable
classes is learned well above chance by a short search and a short training, and `test` reports it; runs
record their dataset and refuse to resume on another."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mdarts_rs.cli import main


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MDARTS_CACHE", str(tmp_path / "cache"))


def _three_classes(root: Path, per_class: int, seed: int = 0) -> Path:
    """Noisy images whose dominant colour is the class (red, green or blue), of varied sizes and formats."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("blue", "green", "red")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(20, 40, 2)
            a = rng.integers(0, 110, (h, w, 3))
            a[..., 2 - c] += 140  # blue -> channel 2, green -> 1, red -> 0
            img = Image.fromarray(a.clip(0, 255).astype(np.uint8))
            img.save(root / name / f"{i:03d}.{'jpg' if i % 2 else 'png'}", quality=90)
    return root


def _ok(r) -> str:
    assert r.exit_code == 0, r.output
    return r.output


def test_folder_search_train_and_test_learn_separable_classes(tmp_path):
    data = _three_classes(tmp_path / "images", per_class=40)
    small = ["--init-channels", "4", "--layers", "5", "--batch-size", "16", "--workers", "1", "--quiet"]
    run = CliRunner().invoke(
        main,
        ["search", "--dataset", "folder", "--data", str(data), "--image-size", "16", "--epochs", "3"]
        + ["--out", str(tmp_path / "search"), "--gap-images", "30", "--no-plots", "--arch-lr", "0.003"]
        + ["--lr", "0.05", *small],
    )
    _ok(run)
    history = [json.loads(line) for line in (tmp_path / "search" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val_acc"] > 0.6, history[-1]  # chance is 1/3
    config = json.loads((tmp_path / "search" / "config.json").read_text())
    d = config["data_description"]
    assert (config["dataset"], d["kind"], d["class_names"], d["image_size"], d["channels"]) == (
        "folder",
        "folder",
        ["blue", "green", "red"],
        16,
        3,
    )
    assert len(d["cache_key"]) == 32 and d["path"] == str(data)
    # Another dataset cannot continue this run (made to look stopped: a finished run is kept as it is).
    (tmp_path / "search" / "genotype.json").rename(tmp_path / "genotype.json")
    other = _three_classes(tmp_path / "other", per_class=12, seed=1)
    (other / "yellow").mkdir()
    Image.new("RGB", (8, 8), (250, 250, 0)).save(other / "yellow" / "a.png")
    r = CliRunner().invoke(
        main,
        ["search", "--dataset", "folder", "--data", str(other), "--image-size", "16", "--epochs", "3"]
        + ["--out", str(tmp_path / "search"), "--gap-images", "30", "--no-plots", "--arch-lr", "0.003"]
        + ["--lr", "0.05", "--resume", *small],
    )
    assert r.exit_code == 1 and "cannot resume with a different dataset (class_names" in r.output, r.output
    (tmp_path / "genotype.json").rename(tmp_path / "search" / "genotype.json")

    train = CliRunner().invoke(
        main,
        ["train", "--genotype", str(tmp_path / "search" / "genotype.json"), "--dataset", "folder", "--data", str(data)]
        + ["--image-size", "16", "--epochs", "3", "--init-channels", "4", "--layers", "5", "--batch-size", "16"]
        + ["--no-auxiliary", "--drop-path", "0", "--cutout", "0", "--lr", "0.05", "--workers", "1", "--quiet"]
        + ["--out", str(tmp_path / "train")],
    )
    _ok(train)
    state_test = CliRunner().invoke(main, ["test", "--checkpoint", str(tmp_path / "train" / "checkpoint.pt")])
    result = json.loads(_ok(state_test).strip().splitlines()[-1])
    assert result["test_images"] == 12  # 10% of 120 held out, from the seed, saved in the checkpoint
    assert result["top1_err"] < 0.3, result  # chance is 2/3
    d = json.loads((tmp_path / "train" / "config.json").read_text())["data_description"]
    assert (d["kind"], d["image_size"], d["holdout"]["test_images"]) == ("folder", 16, 12)
    last = json.loads((tmp_path / "train" / "metrics.jsonl").read_text().splitlines()[-1])
    assert abs(last["top1_err"] - result["top1_err"]) < 1e-9


def test_arrays_and_cifar100_reach_the_search_and_train(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(48) % 2
    x = rng.integers(0, 90, (48, 12, 12, 1), dtype=np.uint8)
    x[y == 1] += 150  # bright and dark: separable
    np.savez(tmp_path / "d.npz", images=x, labels=y, class_names=np.array(["dark", "bright"]))
    small = ["--init-channels", "4", "--layers", "5", "--batch-size", "8", "--workers", "1", "--quiet", "--epochs", "1"]
    _ok(
        CliRunner().invoke(
            main,
            ["search", "--dataset", "arrays", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "s")]
            + ["--gap-images", "8", "--no-plots", *small],
        )
    )
    d = json.loads((tmp_path / "s" / "config.json").read_text())["data_description"]
    assert (d["channels"], d["image_size"], d["class_names"]) == (1, 12, ["dark", "bright"])
    _ok(
        CliRunner().invoke(
            main,
            ["train", "--genotype", str(tmp_path / "s" / "genotype.json"), "--dataset", "arrays"]
            + ["--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "t"), "--no-auxiliary", *small],
        )
    )
    # no test arrays: the training held out a part of the images, saved in its checkpoint, which test scores
    held_out = torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=True)["test_indices"]
    result = json.loads(_ok(CliRunner().invoke(main, ["test", "--checkpoint", str(tmp_path / "t" / "checkpoint.pt")])))
    assert result["test_images"] == len(held_out) > 0
    r = CliRunner().invoke(main, ["test", "--checkpoint", str(tmp_path / "t" / "checkpoint.pt"), "--dataset", "folder"])
    assert r.exit_code == 1 and "trained on arrays, not folder" in r.output
    # the arrays changed since: the saved indices would pick other images, so test refuses them
    trained = next(i for i in range(len(y)) if i not in set(held_out))
    x[trained] ^= 1
    np.savez(tmp_path / "d2.npz", images=x, labels=y, class_names=np.array(["dark", "bright"]))
    r = CliRunner().invoke(
        main, ["test", "--checkpoint", str(tmp_path / "t" / "checkpoint.pt"), "--data", str(tmp_path / "d2.npz")]
    )
    assert r.exit_code == 1 and "d2.npz: not the images" in r.output and "it trained on were" in r.output
    x[trained] ^= 1  # back, and one held-out image changed instead
    x[held_out[0]] ^= 1
    np.savez(tmp_path / "d3.npz", images=x, labels=y, class_names=np.array(["dark", "bright"]))
    r = CliRunner().invoke(
        main, ["test", "--checkpoint", str(tmp_path / "t" / "checkpoint.pt"), "--data", str(tmp_path / "d3.npz")]
    )
    assert r.exit_code == 1 and "d3.npz: not the images" in r.output and "it held out were" in r.output
    r = CliRunner().invoke(main, ["search", "--dataset", "folder", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--dataset folder needs --data" in r.output
    r = CliRunner().invoke(main, ["search", "--dataset", "cifar10", "--label", "coarse", "--data", str(tmp_path)])
    assert r.exit_code == 2 and "label 'coarse'" in r.output
    r = CliRunner().invoke(
        main, ["search", "--dataset", "folder", "--data", str(tmp_path), "--image-size", "30", "--out", str(tmp_path)]
    )
    assert r.exit_code == 2 and "image_size 30 gives 30×30 features" in r.output


def test_cifar100_search_with_coarse_labels(tmp_path):
    rng = np.random.default_rng(0)
    n = 64
    rec = np.concatenate(
        [rng.integers(0, 20, (n, 1)), rng.integers(0, 100, (n, 1)), rng.integers(0, 256, (n, 3072))], axis=1
    ).astype(np.uint8)
    (tmp_path / "c100").mkdir()
    (tmp_path / "c100" / "train.bin").write_bytes(rec.tobytes())
    _ok(
        CliRunner().invoke(
            main,
            ["search", "--dataset", "cifar100", "--label", "coarse", "--data", str(tmp_path / "c100")]
            + ["--out", str(tmp_path / "s"), "--epochs", "1", "--init-channels", "4", "--layers", "5"]
            + ["--batch-size", "8", "--workers", "1", "--gap-images", "8", "--no-plots", "--quiet"],
        )
    )
    d = json.loads((tmp_path / "s" / "config.json").read_text())["data_description"]
    assert (d["kind"], d["label"], d["num_classes"], d["class_names"][0]) == (
        "cifar100",
        "coarse",
        20,
        "aquatic_mammals",
    )
