"""The whole protocol (search × seeds → selection → final trainings → report) with --preset tiny on the CIFAR-10
subset: its report holds the run folders' own numbers, selection never reads the test set, a killed protocol
resumes without redoing finished runs, a failed search is reported while the rest goes on, and torchrun's ranks
give the report one process gives."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mdarts_rs.cli import main
from mdarts_rs.config import ConfigError, ProtocolConfig
from mdarts_rs.data import load_cifar10
from mdarts_rs.evaluate import inputs
from mdarts_rs.protocol import rebuild_report, run_protocol
from mdarts_rs.run import RunFolder

#: The protocol of the suite: 2 γ × 2 seeds, 2 final seeds, every run a few steps of a tiny network.
ARGS = ["--preset", "tiny", "--gamma", "0,1", "--seeds", "0,1", "--final-seeds", "0,1", "--device", "cpu"]


def _cli(out: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mdarts_rs.cli", "protocol", "--data", str(data), "--out", str(out), *ARGS, *extra]


def spy_on_splits(mp: pytest.MonkeyPatch, stage: dict[str, str]) -> list[tuple[str, str]]:
    """Record (stage["now"], split) for every split a training of the protocol loads."""
    reads: list[tuple[str, str]] = []
    load = inputs.load_split

    def spy(settings, split="train", quiet=True):
        reads.append((stage["now"], split))
        return load(settings, split, quiet)

    mp.setattr(inputs, "load_split", spy)
    return reads


def _env() -> dict[str, str]:
    # one thread per process: the same arithmetic in one process and under torchrun
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, cifar_mini) -> tuple[Path, list[tuple[str, str]]]:
    """The suite's protocol run in this process with one thread (as each torchrun process below), and the splits
    each stage loaded: (stage, "train" or "test")."""
    out = tmp_path_factory.mktemp("protocol") / "one"
    stage = {"now": ""}

    def say(text: str) -> None:
        stage["now"] = text.split()[0]

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        reads = spy_on_splits(mp, stage)
        torch.set_num_threads(1)
        try:
            run_protocol(
                data=cifar_mini,
                out=out,
                preset="tiny",
                gammas=(0.0, 1.0),
                seeds=(0, 1),
                final_seeds=(0, 1),
                device="cpu",
                quiet=True,
                say=say,
            )
        finally:
            torch.set_num_threads(threads)
    return out, reads


def _last(folder: Path) -> dict:
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.mark.data
def test_protocol_report_holds_the_run_folders_numbers(one_process):
    one_process, _ = one_process
    report = json.loads((one_process / "report.json").read_text())
    assert not report["failures"]
    for row in report["table1"]:
        assert row["runs"] == 2, row
        picked = [s for s in report["searches"] if s["picked"] and s["alpha_mode"] == row["alpha_mode"]]
        picked = [s for s in picked if s["gamma"] == row["gamma"]]
        assert len(picked) == 1 and picked[0]["search"] == row["selected"]
        # the picked search has the lowest selection error of its row, read from its selection run's metrics
        mine = [s for s in report["searches"] if (s["alpha_mode"], s["gamma"]) == (row["alpha_mode"], row["gamma"])]
        for s in mine:
            assert s["selection_error"] == pytest.approx(100 * _last(one_process / "select" / s["search"])["top1_err"])
        assert picked[0]["selection_error"] == min(s["selection_error"] for s in mine)
        errors = [100 * _last(one_process / "final" / row["row"] / f"seed{k}")["top1_err"] for k in (0, 1)]
        assert list(row["test_errors"].values()) == pytest.approx(errors)
        assert row["mean"] == pytest.approx(np.mean(errors), abs=1e-4)
        assert row["std"] == pytest.approx(np.std(errors, ddof=1), abs=1e-4)
        seconds = sum(
            json.loads(line)["seconds"]
            for s in mine
            for line in (one_process / "search" / s["search"] / "metrics.jsonl").read_text().splitlines()
        )
        assert row["search_hours"] == pytest.approx(seconds / 3600, abs=1e-4) and row["hours_of"] == "CPU"
        assert row["params"] > 0 and row["macs"] > row["params"]
    assert [r["paper"] for r in report["table1"]] == [3.14, 3.00]  # the paper's table 1 at γ = 0 and 1
    text = (one_process / "report.md").read_text()
    assert "Table 1" in text and "no stage before the final one reads the test set" in text
    assert "mdarts-rs protocol --data" in text and (one_process / "figures" / "skip_connect.png").stat().st_size > 0
    # the final runs' test sets are the test files: 2,000 images of the subset
    assert _last(one_process / "final" / "multilevel_gamma0" / "seed0")["test_images"] == 2000


@pytest.mark.data
def test_protocol_report_rebuilds_from_the_folders(one_process, tmp_path):
    one_process, _ = one_process
    copy = tmp_path / "copy"
    shutil.copytree(one_process, copy)
    (copy / "report.json").unlink()
    r = CliRunner().invoke(main, ["report", str(copy)])
    assert r.exit_code == 0, r.output
    rebuilt, original = (json.loads((d / "report.json").read_text()) for d in (copy, one_process))
    assert rebuilt["table1"] == original["table1"] and rebuilt["searches"] == original["searches"]


@pytest.mark.data
def test_protocol_refuses_other_settings_on_resume(one_process, cifar_mini):
    one_process, _ = one_process
    with pytest.raises(
        ValueError, match=r"cannot resume with a different configuration \(.*gammas: \(0.0, 1.0\) -> \(0.0, 5.0\)"
    ):
        run_protocol(ProtocolConfig(data=cifar_mini, out=one_process, preset="tiny", gammas=(0.0, 5.0), resume=True))
    with pytest.raises(FileExistsError, match="holds a protocol: pass --resume"):
        run_protocol(ProtocolConfig(data=cifar_mini, out=one_process, preset="tiny"))
    with pytest.raises(ConfigError, match="search settings \\['gamma'\\] are decided by the protocol"):
        ProtocolConfig(search={"gamma": 2.0})


@pytest.mark.data
def test_protocol_selection_reads_no_test_image(one_process, cifar_mini):
    """Selection trains on the training images less a validation split and scores on it, never loading the test
    set, which is disjoint from it; the final stage reads the test set."""
    out, reads = one_process
    assert ("selection", "train") in reads and ("selection", "test") not in reads and ("final", "test") in reads
    ckpt = torch.load(out / "select" / "multilevel_gamma1_seed0" / "checkpoint.pt", weights_only=True)
    val = np.asarray(ckpt["test_indices"])
    assert len(val) == 1000 and ckpt["dataset"]["images"] == 9000  # 10% of the subset's 10,000, held out
    train_images, _ = load_cifar10(cifar_mini, "train")
    test_images, _ = load_cifar10(cifar_mini, "test")
    held_out = {hashlib.blake2b(img.tobytes()).digest() for img in train_images[val]}
    assert not held_out & {hashlib.blake2b(img.tobytes()).digest() for img in test_images}


@pytest.mark.data
def test_protocol_select_on_test_says_so(tmp_path, cifar_mini, monkeypatch):
    """--select-on test scores the selection on the test set, as the paper and DARTS' code do, and the report
    says plainly that selection used it."""
    reads = spy_on_splits(monkeypatch, {"now": ""})
    out = tmp_path / "p"
    run_protocol(
        data=cifar_mini,
        out=out,
        preset="tiny",
        gammas=(1.0,),
        seeds=(0,),
        final_seeds=(0,),
        device="cpu",
        select_on="test",
        quiet=True,
        say=lambda t: None,
    )
    ckpt = torch.load(out / "select" / "multilevel_gamma1_seed0" / "checkpoint.pt", weights_only=True)
    assert ckpt["test_indices"] is None and [split for _, split in reads].count("test") == 2  # selection's, final's
    assert "**selection used the test set**" in (out / "report.md").read_text()


def _files(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.blake2b(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.mark.data
def test_protocol_killed_during_selection_resumes_without_redoing_runs(tmp_path, cifar_mini):
    out = tmp_path / "p"
    args = _cli(out, cifar_mini, "--quiet", "--gamma", "1", "--final-seeds", "0")
    log = tmp_path / "first.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 300
        first = out / "select" / "multilevel_gamma1_seed0"
        while not (first / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (first / "checkpoint.pt").exists(), log.read_text()[-2000:]
    assert not (out / "final").exists(), "killed after the selection stage: the test did not exercise a resume"
    done = {f: v for f, v in _files(out).items() if f.startswith(("search/", "select/multilevel_gamma1_seed0/"))}
    r = subprocess.run(args + ["--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    after = _files(out)
    assert {f: after[f] for f in done} == done  # finished runs' files untouched
    assert "search " not in r.stderr and "selection multilevel_gamma1_seed0:" not in r.stderr  # no finished run again
    report = json.loads((out / "report.json").read_text())
    assert report["table1"][0]["runs"] == 1 and not report["failures"]


@pytest.mark.data
def test_protocol_reports_a_failed_search_and_goes_on(tmp_path, cifar_mini):
    out = tmp_path / "p"
    busy = RunFolder(out / "search" / "multilevel_gamma1_seed1")
    settings = dict(data=cifar_mini, out=out, preset="tiny", gammas=(1.0,), seeds=(0, 1), final="all")
    settings |= dict(final_seeds=(0,), device="cpu", quiet=True, say=lambda t: None)
    with busy.writer():  # another process writes this search's folder
        data = run_protocol(**settings)
    assert [f["run"] for f in data["failures"]] == ["search/multilevel_gamma1_seed1"]
    assert "being written by another mdarts-rs process" in data["failures"][0]["error"]
    row = data["table1"][0]
    assert row["runs"] == 1 and list(row["test_errors"]) == ["multilevel_gamma1_seed0/seed0"]
    assert "## Failures" in (out / "report.md").read_text()
    again = run_protocol(**settings, resume=True)
    assert not again["failures"] and again["table1"][0]["runs"] == 2  # the failed search ran again on resume


@pytest.mark.data
def test_protocol_under_torchrun_gives_the_one_process_report(one_process, tmp_path, cifar_mini):
    one_process, _ = one_process
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "two"
    args = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mdarts_rs.cli",
        *_cli(out, cifar_mini, "--quiet")[3:],
    ]
    r = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    two, one = (json.loads((d / "report.json").read_text()) for d in (out, one_process))
    for key in ("table1", "searches"):
        for a, b in zip(two[key], one[key]):
            for volatile in ("search_hours", "search_seconds"):
                a.pop(volatile, None), b.pop(volatile, None)
            assert a == b


@pytest.mark.data
def test_protocol_moved_folder_resumes_and_damaged_records_are_named(one_process, tmp_path, cifar_mini):
    one_process, _ = one_process
    moved = tmp_path / "moved"
    shutil.copytree(one_process, moved)
    settings = dict(data=cifar_mini, out=moved, preset="tiny", gammas=(0.0, 1.0), seeds=(0, 1), final_seeds=(0, 1))
    settings |= dict(device="cpu", quiet=True, resume=True)
    runs = {f: v for f, v in _files(moved).items() if f.startswith(("search/", "select/", "final/"))}
    said: list[str] = []
    run_protocol(**settings, say=said.append)  # a moved protocol folder continues where it is
    assert not said and {f: _files(moved)[f] for f in runs} == runs  # nothing ran again
    # a finished run whose record is damaged is named by the report, counted as failed, and not taken for finished
    damaged = moved / "final" / "multilevel_gamma0" / "seed0" / "metrics.jsonl"
    damaged.write_text("junk\n")
    message = f"{damaged}: line 1 is not an epoch's record"
    assert [(f["run"], message in f["error"]) for f in rebuild_report(moved)["failures"]] == [
        ("final/multilevel_gamma0/seed0", True)
    ]
    data = run_protocol(**settings, say=said.append)
    assert [f["run"] for f in data["failures"]] == ["final/multilevel_gamma0/seed0"]
    assert message in data["failures"][0]["error"] and any(str(damaged) in line for line in said)
    damaged.write_text("")  # emptied: the run's checkpoint is finished, its record is not
    data = run_protocol(**settings, say=said.append)
    assert "holds 0 of the 1 epochs its checkpoint finished" in data["failures"][0]["error"]
    args = ["protocol", "--data", str(cifar_mini), "--out", str(moved), *ARGS, "--quiet", "--resume"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and f"1 run in {moved} failed" in r.output and str(damaged) in r.output, r.output
    # a damaged protocol.json is named, as `report` names it
    for text, error in (("[1]", "TypeError"), ('{"settings": ', "JSONDecodeError"), ('{"settings": 5}', "TypeError")):
        (moved / "protocol.json").write_text(text)
        with pytest.raises(ValueError, match=rf"{moved / 'protocol.json'}: not a protocol's settings \({error}"):
            run_protocol(**settings)
    (moved / "protocol.json").unlink()
    with pytest.raises(FileNotFoundError, match="protocol.json: missing, so the protocol in .* cannot be resumed"):
        run_protocol(**settings)
