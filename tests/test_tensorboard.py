"""--tensorboard: the event files hold what metrics.jsonl holds (read back with TensorBoard's own reader), a resumed
run logs no step twice, and without the package the option says how to install it."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
from click.testing import CliRunner

from mdarts_rs.cli import main
from mdarts_rs.config import ConfigError, SearchConfig
from mdarts_rs.evaluate import train
from mdarts_rs.search import SearchDiverged, Searcher, SearchInterrupted, run_search

from tinycifar import interrupt_after, tiny_cfg, tiny_images, tiny_train_cfg

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="the tensorboard extra is not installed"
).EventAccumulator


def events(folder):
    acc = EventAccumulator(str(folder / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def values(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_images()


def test_search_event_files_hold_the_metrics_and_resume_without_repeating_steps(tmp_path, tiny_data, monkeypatch):
    cfg = tiny_cfg(tmp_path, tensorboard=True, log_every=1, epochs=2, steps_per_epoch=3)
    restore = interrupt_after(monkeypatch, 4)  # inside the second epoch
    with pytest.raises(SearchInterrupted):
        run_search(cfg, *tiny_data)
    restore()
    run_search(dataclasses.replace(cfg, resume=True), *tiny_data)
    history = [json.loads(line) for line in (cfg.out / "metrics.jsonl").read_text().splitlines()]
    acc = events(cfg.out)
    assert [s for s, _ in values(acc, "step/train_loss")] == [1, 2, 3, 4, 5, 6]  # each step once, in order
    assert [s for s, _ in values(acc, "epoch/val_acc")] == [3, 6]
    for rec, (_, v) in zip(history, values(acc, "epoch/val_acc")):
        assert v == pytest.approx(rec["val_acc"], rel=1e-6)
    for table, h in history[-1]["entropy"].items():
        assert values(acc, f"entropy/{table}")[-1][1] == pytest.approx(h, rel=1e-6)
    for table, counts in history[-1]["op_counts"].items():
        assert {op: values(acc, f"ops/{table}/{op}")[-1][1] for op in counts} == counts
    assert values(acc, "gap/gap")[-1][1] == pytest.approx(history[-1]["gap"]["gap"], abs=1e-6)
    assert values(acc, "lr/weights")[0][1] == pytest.approx(cfg.lr) and values(acc, "grad_norm/weights")[0][1] > 0
    assert set(acc.Tags()["images"]) == {"alpha", "cells"} and "genotype/text_summary" in acc.Tags()["tensors"]


def test_training_event_files_hold_the_metrics(tmp_path):
    train_data = tiny_images(64, seed=1)
    test_data = tiny_images(32, seed=2)
    cfg = tiny_train_cfg(tmp_path / "t", genotype="DARTS_V2", tensorboard=True, log_every=1)
    history = train(cfg, (train_data, test_data))
    acc = events(cfg.out)
    assert [s for s, _ in values(acc, "step/train_loss")] == [1, 2, 3, 4]
    for key in ("top1_err", "test_loss", "lr"):
        assert [v for _, v in values(acc, f"epoch/{key}")] == pytest.approx([r[key] for r in history], rel=1e-6)
    assert [v for _, v in values(acc, "epoch/drop_path")] == pytest.approx([0.0, 0.1])


def test_tensorboard_without_the_package_says_how_to_install_it(tmp_path, monkeypatch):
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find(name, *a))
    with pytest.raises(ConfigError, match=r"needs the tensorboard package: pip install 'mdarts-rs\[tensorboard\]'"):
        SearchConfig(tensorboard=True)
    SearchConfig()  # nothing else fails
    r = CliRunner().invoke(main, ["search", "--tensorboard", "--out", str(tmp_path / "x"), "--data", str(tmp_path)])
    assert r.exit_code == 2 and "pip install 'mdarts-rs[tensorboard]'" in r.output


def test_overwrite_replaces_the_event_files_only_once_the_new_run_checkpoints(tmp_path, tiny_data, monkeypatch):
    cfg = tiny_cfg(tmp_path, tensorboard=True, log_every=1, epochs=1, steps_per_epoch=3)
    run_search(cfg, *tiny_data)
    first = sorted(p.name for p in (cfg.out / "tb").iterdir())

    def diverge(self, *args):
        raise SearchDiverged("a step that never finishes")

    monkeypatch.setattr(Searcher, "train_step", diverge)
    with pytest.raises(SearchDiverged):
        run_search(dataclasses.replace(cfg, overwrite=True), *tiny_data)
    assert sorted(p.name for p in (cfg.out / "tb").iterdir()) == first  # the earlier run stays as it was
    monkeypatch.undo()
    run_search(dataclasses.replace(cfg, overwrite=True, steps_per_epoch=2), *tiny_data)
    assert first[0] not in {p.name for p in (cfg.out / "tb").iterdir()}
    assert [s for s, _ in values(events(cfg.out), "step/train_loss")] == [1, 2]  # the new run's steps only
