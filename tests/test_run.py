"""Run folders: one writer at a time, no silent overwrite, resumes only of the same data, finished sweep runs
kept, a full disk or a foreign file gives a message and loses nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from mdarts_rs import GenotypeError, load_genotype
from mdarts_rs.cli import main
from mdarts_rs.config import MAX_SEED, SearchConfig, derived_seed
from mdarts_rs.run import RunFolder, RunFolderBusy, read_checkpoint
from mdarts_rs.search import SearchDiverged, Searcher, SearchInterrupted, run_search

from clicheck import invoke, said
from tinycifar import tiny_images, write_bin

TINY = "--epochs 1 --batch-size 4 --init-channels 4 --layers 5 --steps-per-epoch 2 --gap-images 8 --workers 1 --device cpu --quiet --no-plots".split()


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_images()


@pytest.fixture
def data_dir(tmp_path, tiny_data):
    return write_bin(tmp_path / "cifar", *tiny_data)


def tiny_cfg(out, **kw) -> SearchConfig:
    base = dict(
        out=out,
        epochs=1,
        batch_size=4,
        init_channels=4,
        layers=5,
        steps_per_epoch=2,
        gap_images=8,
        workers=1,
        quiet=True,
        plots=False,
        device="cpu",
    )
    return SearchConfig(**{**base, **kw})


def test_run_folder_has_one_writer_named_by_pid_until_it_dies(tmp_path, tiny_data):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"f = open({str(out / '.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.write(str(os.getpid())); f.flush()\n"
            "print('locked', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=f"being written by another mdarts-rs process \\(PID {holder.pid}\\)"):
            run_search(tiny_cfg(out), *tiny_data)
        assert not (out / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    run_search(tiny_cfg(out), *tiny_data)  # the lock died with its holder
    assert (out / "genotype.json").exists()


def test_run_folder_refuses_another_run_unless_overwrite(tmp_path, tiny_data):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a run that wrote its config only
    with pytest.raises(FileExistsError, match=r"holds another run \(config.json\).*--overwrite"):
        run_search(tiny_cfg(out), *tiny_data)
    (out / "metrics.jsonl").write_text('{"epoch": 7}\n')
    run_search(tiny_cfg(out, overwrite=True), *tiny_data)
    assert json.loads((out / "metrics.jsonl").read_text())["epoch"] == 0
    assert json.loads((out / "config.json").read_text())["overwrite"] is True


def test_cli_refuses_an_empty_out(tmp_path, data_dir):
    r = CliRunner().invoke(main, ["search", "--data", str(data_dir), "--out", "", *TINY])
    assert r.exit_code == 2 and "empty path" in r.output
    with pytest.raises(ValueError, match="empty path"):
        SearchConfig(out="")


def test_resume_refuses_other_data(tmp_path, tiny_data):
    images, labels = tiny_data
    cfg = tiny_cfg(tmp_path / "run", epochs=2)
    original, calls = Searcher.train_step, []

    def step_then_interrupt(self, *args):
        out = original(self, *args)
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Searcher, "train_step", step_then_interrupt)
        with pytest.raises(SearchInterrupted):
            run_search(cfg, images, labels)
    other = images.copy()
    other[0, 0, 0, 0] ^= 1
    with pytest.raises(
        ValueError,
        match=r"cannot resume with other data: the run searched 64 images, blake2b \w+, this data is 64 images",
    ):
        run_search(dataclasses.replace(cfg, resume=True), other, labels)
    result = run_search(dataclasses.replace(cfg, resume=True), images, labels)
    assert [r["epoch"] for r in result.history] == [0, 1]


def test_sweep_resume_keeps_finished_runs_and_finishes_the_others(tmp_path, data_dir):
    out = tmp_path / "sweep"
    args = ["sweep", "--gamma", "0,1,5", "--data", str(data_dir), "--out", str(out), *TINY]
    r = CliRunner().invoke(main, [*args[:2], "0", *args[3:]])  # only γ = 0 ran before
    assert r.exit_code == 0, r.output
    finished = (out / "gamma_0" / "genotype.json").stat().st_mtime_ns
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert "gamma_0: finished earlier, kept" in r.output
    assert (out / "gamma_0" / "genotype.json").stat().st_mtime_ns == finished
    rows = json.loads((out / "summary.json").read_text())
    assert [row["gamma"] for row in rows] == [0.0, 1.0, 5.0]
    assert all((out / f"gamma_{g}" / "genotype.json").exists() for g in (0, 1, 5))


def test_read_checkpoint_names_foreign_and_wrong_kind_files(tmp_path, tiny_data):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: a torch file, but not a checkpoint written by mdarts-rs"):
        read_checkpoint(tmp_path / "other.pt", "train")
    run_search(tiny_cfg(tmp_path / "run"), *tiny_data)
    with pytest.raises(
        ValueError, match=r"a checkpoint of mdarts-rs search \(a supernet\); this needs one of mdarts-rs train"
    ):
        read_checkpoint(tmp_path / "run" / "checkpoint.pt", "train")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a zip")
    with pytest.raises(ValueError, match="junk.pt: cannot read checkpoint"):
        read_checkpoint(tmp_path / "junk.pt", "search")


def test_cli_test_with_a_search_checkpoint_or_bad_device_says_so(tmp_path, tiny_data, data_dir):
    run_search(tiny_cfg(tmp_path / "run"), *tiny_data)
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    r = CliRunner().invoke(main, ["test", "--checkpoint", ckpt, "--data", str(data_dir), "--device", "cpu"])
    assert r.exit_code == 1 and "a checkpoint of mdarts-rs search" in r.output and "Traceback" not in r.output
    for device, message in (
        ("bogus", "is not a device name"),
        ("cuda:7" if not torch.cuda.is_available() else "cuda:99", "cuda"),
    ):
        r = CliRunner().invoke(
            main,
            [
                "search",
                "--data",
                str(data_dir),
                "--out",
                str(tmp_path / device),
                *TINY[:-4],
                "--quiet",
                "--no-plots",
                "--device",
                device,
            ],
        )
        assert r.exit_code == 2 and message in r.output, r.output
        assert not (tmp_path / device).exists()


def test_cli_search_into_a_file_or_unwritable_folder_says_so(tmp_path, data_dir):
    (tmp_path / "afile").write_text("x")
    r = CliRunner().invoke(main, ["search", "--data", str(data_dir), "--out", str(tmp_path / "afile"), *TINY])
    assert r.exit_code == 1 and "is a file, not a run folder" in r.output
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        r = CliRunner().invoke(main, ["search", "--data", str(data_dir), "--out", str(locked), *TINY])
        assert r.exit_code == 1 and "permission denied" in r.output


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    # the checkpoint's temporary file is /dev/full, where every write fails with ENOSPC
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux) to fill a disk")
    run = RunFolder(tmp_path / "run")
    run.save_checkpoint({"format": 1, "config": {}, "model": {"w": torch.ones(3)}, "a_opt": {}})
    (run.path / ".checkpoint.pt.tmp").symlink_to("/dev/full")
    with pytest.raises(OSError, match=r"cannot write .*checkpoint.pt: the disk is full; its previous version is kept"):
        run.save_checkpoint({"format": 1, "config": {}, "model": {"w": torch.zeros(3)}, "a_opt": {}})
    assert not (run.path / ".checkpoint.pt.tmp").exists() and not (run.path / ".checkpoint.pt.tmp").is_symlink()
    assert torch.equal(read_checkpoint(run.checkpoint, "search")["model"]["w"], torch.ones(3))
    (run.path / ".metrics.jsonl.tmp").symlink_to("/dev/full")
    with pytest.raises(OSError, match=r"cannot write .*metrics.jsonl: the disk is full"):
        run.write_metrics([{"epoch": 0}])
    assert not run.metrics.exists()


def test_genotype_paths_are_files_whatever_their_name(tmp_path):
    good = tmp_path / "copy (2)" / "genotype.json"
    good.parent.mkdir()
    good.write_text(
        load_genotype(
            "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
            "('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
            "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
            "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])"
        ).to_json()
    )
    assert load_genotype(str(good)).to_json() == good.read_text()
    r = CliRunner().invoke(main, ["info", str(good)])
    assert r.exit_code == 0, r.output
    with pytest.raises(GenotypeError, match="is a folder, not a genotype file"):
        load_genotype(good.parent)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(GenotypeError, match=r"bin.json: not a text file \(byte 0 is not UTF-8\)"):
        load_genotype(tmp_path / "bin.json")
    (tmp_path / "nul.json").write_bytes(b"{\x00}")
    with pytest.raises(GenotypeError, match="nul.json: not a text file"):
        load_genotype(tmp_path / "nul.json")
    r = CliRunner().invoke(main, ["info", str(tmp_path / "bin.json")])
    assert r.exit_code == 1 and "not a text file" in r.output and "Traceback" not in r.output


def test_resume_refuses_a_run_of_an_earlier_version_naming_the_removed_settings(tmp_path, tiny_data):
    # runs written before the batched cell lost its variants record compile and channels_last
    cfg = tiny_cfg(tmp_path / "run", epochs=2)
    run_search(cfg, *tiny_data)
    state = torch.load(cfg.out / "checkpoint.pt", weights_only=True)
    state["config"].update(compile=False, channels_last=True)
    torch.save(state, cfg.out / "checkpoint.pt")
    with pytest.raises(
        ValueError, match=r"settings this version removed \(channels_last, compile\); it cannot be resumed or reloaded"
    ):
        run_search(dataclasses.replace(cfg, resume=True), *tiny_data)


def test_cli_test_with_a_bad_device_says_so(tmp_path, data_dir):
    torch.save({"format": 1}, tmp_path / "x.pt")
    for device, message in (("bogus", "is not a device name"), ("cuda:99", "cuda")):
        r = CliRunner().invoke(
            main, ["test", "--checkpoint", str(tmp_path / "x.pt"), "--data", str(data_dir), "--device", device]
        )
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


def test_cli_test_with_a_training_checkpoint_of_an_earlier_version_says_so(tmp_path, data_dir):
    from mdarts_rs.config import TrainConfig

    config = {**TrainConfig().to_json(), "channels_last": False}
    torch.save({"format": 1, "config": config, "model": {}, "genotype": ""}, tmp_path / "old.pt")
    r = CliRunner().invoke(
        main, ["test", "--checkpoint", str(tmp_path / "old.pt"), "--data", str(data_dir), "--device", "cpu"]
    )
    assert r.exit_code == 1 and "settings this version removed (channels_last)" in r.output, r.output


def test_sweep_resume_restarts_a_run_stopped_before_its_first_checkpoint(tmp_path, data_dir):
    out = tmp_path / "sweep"
    (out / "gamma_1").mkdir(parents=True)
    (out / "gamma_1" / "config.json").write_text("{}")  # killed after writing its config
    r = CliRunner().invoke(
        main, ["sweep", "--gamma", "1", "--data", str(data_dir), "--out", str(out), *TINY, "--resume"]
    )
    assert r.exit_code == 0, r.output
    assert (out / "gamma_1" / "genotype.json").exists()


def test_sweep_runs_every_variant_and_fails_at_the_end_naming_the_failed_ones(tmp_path, data_dir):
    out = tmp_path / "sweep"
    with RunFolder(out / "gamma_1").writer():  # another process writes gamma_1
        r = CliRunner().invoke(main, ["sweep", "--gamma", "0,1,5", "--data", str(data_dir), "--out", str(out), *TINY])
    assert r.exit_code == 1
    assert "1 of 3 runs" in r.output and "gamma_1: " in r.output and "being written by another" in r.output
    assert (out / "gamma_0" / "genotype.json").exists() and (out / "gamma_5" / "genotype.json").exists()
    assert [row["gamma"] for row in json.loads((out / "summary.json").read_text())] == [0.0, 5.0]


# ---- --overwrite loses nothing before the new run's first checkpoint, and only a run's own files -----------------

TRAIN = "--epochs 1 --batch-size 8 --init-channels 4 --layers 5 --steps-per-epoch 2 --workers 1 --device cpu --quiet --genotype darts_v2".split()


@pytest.fixture
def train_data(data_dir):
    """The tiny CIFAR-10 folder with a test set (its training images again)."""
    (data_dir / "test_batch.bin").write_bytes((data_dir / "data_batch_1.bin").read_bytes())
    return data_dir


def _files(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (but the lock, which holds the last writer's PID) and its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize(
    "command, refused, message",
    [
        ("search", ["--batch-size", "65536"], "S_train has 32 images, fewer than one batch of 65536"),
        ("search", ["--init-channels", "1024", "--layers", "8"], "needs at least about"),
        ("train", ["--genotype", "nowhere.json"], "nowhere.json: no such genotype file"),
        ("train", ["--init-channels", "1024", "--layers", "20", "--batch-size", "96"], "needs at least about"),
    ],
)
def test_overwrite_refused_later_loses_nothing_and_replaces_only_a_runs_files(
    tmp_path, train_data, monkeypatch, command, refused, message
):
    monkeypatch.setattr("mdarts_rs.memory.available_bytes", lambda device: 16 * 2**30)
    out = tmp_path / "run"
    base = [command, "--data", train_data, "--out", out, *(TINY if command == "search" else TRAIN)]
    said(invoke(*base, "--epochs", "2"), 0)  # a finished run of 2 epochs
    (out / "plots").mkdir(exist_ok=True)
    (out / "plots" / "my_figure.png").write_bytes(b"mine")
    (out / "notes.txt").write_text("mine")
    before = _files(out)
    said(invoke(*base, "--overwrite", *refused), 1, message)
    assert _files(out) == before  # every file as it was: the refusal came before anything was removed

    out_text = said(invoke(*base, "--overwrite"), 0, f"{out}: --overwrite removed the earlier run's files (")
    after = _files(out)
    assert after["plots/my_figure.png"] == b"mine" and after["notes.txt"] == b"mine"
    assert len(json.loads("[" + after["metrics.jsonl"].decode().strip().replace("\n", ",") + "]")) == 1
    assert json.loads(after["config.json"])["overwrite"] is True
    if command == "search":  # the genotype of the earlier run's second epoch is gone, the new first one written
        assert "genotypes/epoch_001.json" not in after and "genotypes/epoch_000.json" in after
        assert "genotypes/epoch_000.json, genotypes/epoch_001.json" in out_text
    removed = out_text.split("removed the earlier run's files (")[1].split(")")[0]
    assert "my_figure" not in removed and "notes" not in removed and "checkpoint.pt" in removed


def test_a_run_stopped_before_its_first_checkpoint_keeps_the_run_it_would_replace(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path / "run")
    run_search(cfg, *tiny_data)
    before = _files(cfg.out)

    def diverge(self, *args):
        raise SearchDiverged("epoch 0 step 0: the weight loss is nan; " + self._kept())

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Searcher, "train_step", diverge)
        with pytest.raises(
            SearchDiverged, match="this run wrote no checkpoint; the earlier run in .* is kept as it was"
        ):
            run_search(dataclasses.replace(cfg, overwrite=True, seed=1), *tiny_data)
    assert _files(cfg.out) == before


# ---- a busy folder, damaged checkpoints, the largest seed and networks too large: messages ------------------------


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--resume"]])
def test_cli_search_into_a_folder_being_written_says_so(tmp_path, data_dir, tiny_data, extra):
    out = tmp_path / "run"
    run_search(tiny_cfg(out), *tiny_data)
    (out / "genotype.json").unlink()  # stopped before its end: --resume continues it
    with RunFolder(out).writer():  # another writer holds the folder (a lock is per open file, even in one process)
        r = invoke("search", "--data", data_dir, "--out", out, *TINY, *extra)
    said(r, 1, f"{out} is being written by another mdarts-rs process (PID {os.getpid()})")


def _damage(path, change) -> None:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def _first_weight(state) -> None:
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(1)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update(config="x"), "entry 'config' must be a mapping, got str 'x'"),
        (lambda s: s["config"].update(bogus=1), "checkpoint.pt (its 'config'): unknown fields ['bogus']"),
        (lambda s: s["config"].update(epochs="5"), "entry 'config' holds settings this version refuses: epochs"),
        (_first_weight, "entry 'model' does not fit the supernet and optimizers of its settings"),
        (lambda s: s.update(epoch=-5), "entry 'epoch' must be a non-negative integer, got int -5"),
        (lambda s: s.update(epoch=3), "entry 'epoch' is 3 but 'history' holds 1 epochs"),
        (lambda s: s.pop("w_opt"), "a damaged checkpoint: no 'w_opt' entry"),
        (
            lambda s: s["model"].update(x=5),
            "entry 'model' must be a mapping of names to tensors, but weight 'x' is a int, not a tensor",
        ),
        (lambda s: s["w_opt"].update(param_groups=[]), "entry 'w_opt' does not fit"),
        (lambda s: s.update(acc={"x": 1}), "entry 'acc' does not fit"),
        (lambda s: s.update(world_size="2"), "entry 'world_size' must be a non-negative integer"),
    ],
)
def test_cli_resume_of_a_damaged_search_checkpoint_names_file_and_entry(tmp_path, data_dir, change, message):
    out = tmp_path / "run"
    said(invoke("search", "--data", data_dir, "--out", out, *TINY), 0)
    (out / "genotype.json").unlink()  # stopped before its end: --resume reads the checkpoint
    _damage(out / "checkpoint.pt", change)
    said(invoke("search", "--data", data_dir, "--out", out, *TINY, "--resume"), 1, f"{out / 'checkpoint.pt'}", message)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update(rng=[1, 2]), "entry 'rng' must be a tensor, got a list of int"),
        (lambda s: s.update(rng=torch.zeros(3)), "entry 'rng' does not fit the network and optimizer"),
        (lambda s: s.update(history="x"), "entry 'history' must be a list of epoch records"),
        (lambda s: s["opt"].update(param_groups=[]), "entry 'opt' does not fit"),
    ],
)
def test_cli_resume_of_a_damaged_training_checkpoint_names_file_and_entry(tmp_path, train_data, change, message):
    out = tmp_path / "run"
    said(invoke("train", "--data", train_data, "--out", out, *TRAIN), 0)
    _damage(out / "checkpoint.pt", change)
    r = invoke("train", "--data", train_data, "--out", out, *TRAIN, "--resume")
    said(r, 1, f"{out / 'checkpoint.pt'}", message)


def test_the_largest_seed_runs_a_search_and_a_training(tmp_path, train_data):
    assert derived_seed(MAX_SEED, 1) == 0 and derived_seed(MAX_SEED, 0) == MAX_SEED and derived_seed(5, 2) == 7
    said(invoke("search", "--data", train_data, "--out", tmp_path / "s", *TINY, "--seed", MAX_SEED), 0)
    said(invoke("train", "--data", train_data, "--out", tmp_path / "t", *TRAIN, "--seed", MAX_SEED), 0)


@pytest.mark.parametrize(
    "command, args",
    [
        ("search", ["--init-channels", "1024", "--layers", "8", "--batch-size", "32"]),
        ("search", ["--init-channels", "256", "--layers", "8", "--batch-size", "32"]),
        ("search", ["--init-channels", "16", "--layers", "1000", "--batch-size", "32"]),
        ("train", ["--init-channels", "1024", "--layers", "8", "--batch-size", "96"]),
        ("train", ["--init-channels", "36", "--layers", "1000", "--batch-size", "96"]),
    ],
)
def test_networks_too_large_for_the_memory_are_refused_with_the_estimate(
    tmp_path, train_data, monkeypatch, command, args
):
    monkeypatch.setattr("mdarts_rs.memory.available_bytes", lambda device: 16 * 2**30)
    base = TINY if command == "search" else TRAIN  # the search's S_train holds 32 images: batches up to 32
    r = invoke(command, "--data", train_data, "--out", tmp_path / "run", *base, *args)
    c, layers = args[1], args[3]
    said(r, 1, f"(C = {c}, {layers} cells, ", "needs at least about", "more than the 16.0 GiB free on cpu: lower")
    assert not (tmp_path / "run" / "config.json").exists()
