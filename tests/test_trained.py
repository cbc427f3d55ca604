"""Using what a search and a training found: published genotypes by name, a trained network from its
checkpoint, export with a verified round trip, and predictions for image files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import mdarts_rs as md
from mdarts_rs import evaluate, run
from mdarts_rs.cli import main
from mdarts_rs.config import TrainConfig
from mdarts_rs.evaluate.network import count_params, eval_network
from mdarts_rs.evaluate.trained import (
    CIFAR10_CLASSES,
    FORMATS,
    ExportError,
    export,
    load_trained,
    predict,
    read_image,
    read_images,
    verify_export,
)
from mdarts_rs.genotypes import PUBLISHED

from clicheck import invoke, said
from hostile import png_claiming
from published import ALL
from tinycifar import tiny_images, write_bin


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_genotypes_by_name_build(name):
    g = md.load_genotype(name.upper())  # names are case-insensitive
    assert g == md.load_genotype(name)
    assert count_params(eval_network(g, "cifar10")) > 3_000_000


def test_published_genotypes_are_their_authors_texts():
    # the repositories' own printouts (tests/published.py, verbatim) parse to the same genotypes
    for test_name, name in (
        ("DARTS_V1", "darts_v1"),
        ("DARTS_V2", "darts_v2"),
        ("PDARTS", "pdarts"),
        ("PC_DARTS", "pc_darts"),
    ):
        assert md.load_genotype(name) == md.Genotype.from_darts(ALL[test_name])
    assert count_params(eval_network(md.load_genotype("darts_v2"), "cifar10")) == 3_349_342  # DARTS' own logs
    # PC-DARTS reports 5.3M parameters for its ImageNet-searched cell in the mobile setting
    assert round(count_params(eval_network(md.load_genotype("pc_darts_imagenet"), "imagenet")) / 1e6, 1) == 5.3


def test_cli_takes_published_names_and_names_them_on_a_typo():
    r = CliRunner().invoke(main, ["info", "darts_v2"])
    assert r.exit_code == 0 and "3,349,342" in r.output, r.output
    r = CliRunner().invoke(main, ["info", "darts_v3"])
    assert r.exit_code == 1 and "darts_v2" in r.output and "pc_darts_imagenet" in r.output


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny network trained for two steps on random CIFAR-shaped images."""
    root = tmp_path_factory.mktemp("trained")
    images, labels = tiny_images(48)
    data = write_bin(root / "cifar", images, labels)
    (data / "test_batch.bin").write_bytes((data / "data_batch_1.bin").read_bytes())
    cfg = TrainConfig(
        genotype="pc_darts",
        data=data,
        out=root / "run",
        epochs=1,
        batch_size=8,
        init_channels=4,
        layers=5,
        steps_per_epoch=2,
        workers=1,
        device="cpu",
        quiet=True,
    )
    evaluate.train(cfg)
    return cfg.out / "checkpoint.pt"


def test_load_trained_gives_the_network_and_its_inputs(trained_run):
    assert md.load_trained is load_trained
    t = load_trained(trained_run)
    assert not t.model.training and t.image_size == 32 and t.class_names == list(CIFAR10_CLASSES)
    assert t.genotype == md.load_genotype("pc_darts")
    logits = t.logits(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    state = torch.load(trained_run, weights_only=True)
    assert state["class_names"] == list(CIFAR10_CLASSES)


def _nan_classifier(state: dict) -> None:
    state["model"]["classifier.weight"][0, 0] = float("nan")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: s["dataset"].update(mean=[0.5]), r"its 'dataset.mean' is \[0.5\]; expected 3 finite numbers, one"),
        (
            lambda s: s["dataset"].update(std=[0.2, 0.0, 0.2]),
            r"'dataset.std' is \[0.2, 0.0, 0.2\]; expected 3 finite numbers above 0",
        ),
        (lambda s: s["dataset"].update(mean=["a", 0, 0]), r"'dataset.mean' is \['a', 0, 0\]"),
        (
            lambda s: s["dataset"].update(channels="x"),
            r"its 'dataset.channels' is 'x'; expected an integer from 1 to 64",
        ),
        (
            lambda s: s["dataset"].update(image_size=10**9),
            r"its 'dataset.image_size' is 1000000000; expected an integer",
        ),
        (_nan_classifier, r"weight 'classifier.weight' holds 1 NaN or infinite value\(s\); the checkpoint is damaged"),
        (
            lambda s: s["model"].update({"classifier.weight": s["model"]["classifier.weight"].long()}),
            r"weight 'classifier.weight' is torch.int64 of shape \(10, \d+\); expected a 2-D floating-point tensor",
        ),
        (
            lambda s: s["model"].update({"classifier.bias": [0.0] * 10}),
            r"weight 'classifier.bias' is a list, not a tensor",
        ),
    ],
)
def test_load_trained_refuses_damaged_inputs_and_weights_naming_them(tmp_path, trained_run, damage, message):
    state = torch.load(trained_run, weights_only=True)
    damage(state)
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=message) as e:
        load_trained(tmp_path / "checkpoint.pt")
    assert str(e.value).startswith(f"{tmp_path / 'checkpoint.pt'}: ")
    r = CliRunner().invoke(
        main,
        [
            "export",
            "--checkpoint",
            str(tmp_path / "checkpoint.pt"),
            "--format",
            "pt2",
            "--out",
            str(tmp_path / "x.pt2"),
        ],
    )
    assert r.exit_code == 1 and "Traceback" not in r.output and "checkpoint.pt: " in r.output, r.output


def test_load_trained_refuses_a_search_checkpoint(tmp_path):
    from mdarts_rs.config import SearchConfig
    from mdarts_rs.search import run_search

    images, labels = tiny_images(48)
    cfg = SearchConfig(
        out=tmp_path / "search",
        epochs=1,
        batch_size=4,
        init_channels=4,
        layers=5,
        steps_per_epoch=1,
        gap_images=4,
        workers=1,
        quiet=True,
        plots=False,
        device="cpu",
    )
    run_search(cfg, images, labels)
    with pytest.raises(ValueError, match="a checkpoint of mdarts-rs search .* this needs one of mdarts-rs train"):
        load_trained(cfg.out / "checkpoint.pt")


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_round_trip_and_a_corrupt_file_is_refused(tmp_path, trained_run, fmt):
    t = load_trained(trained_run)
    out = tmp_path / f"net.{fmt}"
    diff = export(t, fmt, out)
    assert diff <= 1e-4
    meta = json.loads((tmp_path / f"net.{fmt}.json").read_text())
    assert meta["image_size"] == 32 and meta["class_names"] == list(CIFAR10_CLASSES) and len(meta["mean"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"net.{fmt}", f"net.{fmt}.json"]  # no second file
    if fmt == "onnx":  # every weight inside net.onnx: a copy of it alone loads and computes the network
        (tmp_path / "copy").mkdir()
        copy = Path(shutil.copy(out, tmp_path / "copy"))
        onnxruntime = pytest.importorskip("onnxruntime")
        session = onnxruntime.InferenceSession(str(copy), providers=["CPUExecutionProvider"])
        x = torch.randn(3, 3, 32, 32)
        assert np.abs(session.run(None, {"images": x.numpy()})[0] - t.logits(x).numpy()).max() <= 1e-4
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(ExportError, match=f"net.{fmt}"):
        verify_export(out, fmt, t)


def test_export_refuses_a_file_that_computes_something_else(tmp_path, trained_run):
    t = load_trained(trained_run)
    export(t, "pt2", tmp_path / "a.pt2")
    with torch.no_grad():
        t.model.classifier.bias += 1.0  # the network changed after the export
    with pytest.raises(ExportError, match="outputs differ from the network's by"):
        verify_export(tmp_path / "a.pt2", "pt2", t)


def test_cli_predict_prints_top_classes_of_each_image(tmp_path, trained_run):
    images, _ = tiny_images(2)
    paths = []
    for i, im in enumerate(images):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.ascontiguousarray(im.transpose(1, 2, 0))).resize((48, 40)).save(p)  # any size
        paths.append(str(p))
    r = CliRunner().invoke(main, ["predict", "--checkpoint", str(trained_run), *paths])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"{paths[0]}:" and lines[6] == f"{paths[1]}:" and len(lines) == 12
    probs = [float(line.split("%")[0]) / 100 for line in lines[1:6]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-3
    assert all(line.split()[-1] in CIFAR10_CLASSES for line in lines[1:6])
    top = predict(load_trained(trained_run), [paths[0]], top=10)[0]
    assert abs(sum(p for _, p in top) - 1) < 1e-5


def test_cli_predict_names_a_file_that_is_not_an_image(tmp_path, trained_run):
    (tmp_path / "x.png").write_bytes(b"not an image")
    r = CliRunner().invoke(main, ["predict", "--checkpoint", str(trained_run), str(tmp_path / "x.png")])
    assert r.exit_code == 1 and "x.png: cannot read it as an image" in r.output


@pytest.mark.parametrize("device", ["bogus", "cuda:99"])
def test_cli_predict_refuses_a_device_as_test_does(tmp_path, trained_run, device):
    # resolve_device's message (a name torch does not know; a GPU this machine lacks), not torch's own text
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    predicted = said(invoke("predict", "--checkpoint", trained_run, "--device", device, tmp_path / "a.png"), 1)
    assert predicted == said(invoke("test", "--checkpoint", trained_run, "--device", device), 1)
    assert predicted.startswith(f"Error: device {device!r}"), predicted
    with pytest.raises(ValueError, match=f"device {device!r}"):
        load_trained(trained_run, device)


def test_predict_reads_images_exactly_as_the_folder_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MDARTS_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: Pillow's plain open ignores it
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir()
    Image.fromarray(photo).save(tmp_path / "d" / "a" / "rotated.jpg", quality=90, exif=exif)
    Image.fromarray(rng.integers(0, 65536, (40, 36), dtype=np.uint16)).save(tmp_path / "d" / "b" / "g16.png")
    folder = md.data.load_folder(tmp_path / "d", image_size=24)
    files = [tmp_path / "d" / "a" / "rotated.jpg", tmp_path / "d" / "b" / "g16.png"]
    assert np.array_equal(read_images(files, 24), folder.images)
    assert np.array_equal(read_image(files[0], 24), folder.images[0].transpose(1, 2, 0))


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ((100_000, 100_000), "100000×100000 pixels is above the limit of 100000000 (MAX_PIXELS)"),
        ((1, 2_000_000), "1×2000000 pixels: its shorter side resized to 32 makes it 32×64000000, above the limit"),
    ],
)
def test_predict_refuses_images_too_large_naming_them(tmp_path, trained_run, claims, why):
    (tmp_path / "big.png").write_bytes(png_claiming(*claims))
    r = CliRunner().invoke(main, ["predict", "--checkpoint", str(trained_run), str(tmp_path / "big.png")])
    assert r.exit_code == 1 and f"{tmp_path / 'big.png'}: cannot read it as an image ({why}" in r.output, r.output


def test_load_trained_of_an_image_folder_run_keeps_its_classes_and_input(tmp_path):
    # an ImageNet-recipe run over an image folder saves its folders' class names; a checkpoint written as
    # Trainer.state writes it (torchvision's ImageFolder itself is not needed to read it back)
    cfg = TrainConfig(genotype="darts_v2", dataset="imagenet", init_channels=4, layers=5, out=tmp_path / "run")
    net = eval_network(md.load_genotype("darts_v2"), "imagenet", 4, 5, True, 0.0, 3)
    state = {
        "format": 1,
        "config": cfg.to_json(),
        "genotype": md.load_genotype("darts_v2").to_json(),
        "epoch": 1,
        "history": [],
        "model": net.state_dict(),
        "opt": {},
        "class_names": ["cat", "dog", "fox"],
    }
    torch.save(state, tmp_path / "checkpoint.pt")
    t = load_trained(tmp_path / "checkpoint.pt")
    assert (t.dataset, t.image_size, t.class_names) == ("imagenet", 224, ["cat", "dog", "fox"])
    assert t.mean == (0.485, 0.456, 0.406)
    Image.fromarray(np.zeros((300, 260, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (top,) = predict(t, [tmp_path / "a.png"])
    assert len(top) == 3 and {name for name, _ in top} == {"cat", "dog", "fox"}


def test_cli_export_offers_the_formats_export_writes():
    (fmt,) = [p for p in main.commands["export"].params if p.name == "fmt"]
    assert tuple(fmt.type.choices) == FORMATS


# ---- export writes only new regular files (never its checkpoint), whole or not at all; damaged checkpoints ----


def _copy(checkpoint: Path, folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(checkpoint, folder / "checkpoint.pt")
    return folder / "checkpoint.pt"


def test_cli_export_refuses_an_existing_out_its_checkpoint_and_other_than_regular_files(tmp_path, trained_run):
    ckpt = _copy(trained_run, tmp_path / "run")
    out = tmp_path / "net.ts"
    said(invoke("export", "--checkpoint", ckpt, "--format", "torchscript", "--out", out), 0)
    said(
        invoke("export", "--checkpoint", ckpt, "--format", "torchscript", "--out", out),
        1,
        f"{out}: exists; pass --overwrite",
    )
    out.with_name("other.ts.json").write_text("{}")  # the metadata file counts too
    r = invoke("export", "--checkpoint", ckpt, "--format", "torchscript", "--out", out.with_name("other.ts"))
    said(r, 1, "other.ts.json: exists; pass --overwrite")
    said(invoke("export", "--checkpoint", ckpt, "--format", "torchscript", "--out", out, "--overwrite"), 0)
    (tmp_path / "to_net.ts").symlink_to(tmp_path / "net2.ts")  # written through the link, metadata beside it
    said(invoke("export", "--checkpoint", ckpt, "--format", "torchscript", "--out", tmp_path / "to_net.ts"), 0)
    assert (tmp_path / "net2.ts").is_file() and (tmp_path / "to_net.ts.json").is_file()
    before = ckpt.read_bytes()
    (tmp_path / "link.pt").symlink_to(ckpt)
    for target in (ckpt, tmp_path / "link.pt"):
        for extra in ([], ["--overwrite"]):
            r = invoke("export", "--checkpoint", ckpt, "--format", "torchscript", "--out", target, *extra)
            said(r, 1, f"{ckpt}: is the checkpoint the network is read from; export to another file")
    assert ckpt.read_bytes() == before
    os.mkfifo(tmp_path / "fifo")
    for device in ["/dev/null", "/dev/full", tmp_path / "fifo"]:
        if Path(device).exists():
            r = invoke("export", "--checkpoint", ckpt, "--format", "onnx", "--out", device, "--overwrite")
            said(r, 1, f"{device}: is a device, FIFO or socket, not a regular file; export writes regular files only")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)
    with pytest.raises(FileExistsError, match="exists; pass --overwrite"):
        export(load_trained(ckpt), "pt2", out)  # the library refuses the same way


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) to fill a disk")
@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_export_to_a_full_disk_says_so_and_writes_nothing(tmp_path, trained_run, fmt):
    # the temporary files are /dev/full, where every write fails with ENOSPC (torch's own writer aborted there)
    out = tmp_path / f"net.{fmt}"
    for tmp in (f".net.{fmt}.tmp", f".net.{fmt}.json.tmp"):
        (tmp_path / tmp).symlink_to("/dev/full")
        said(invoke("export", "--checkpoint", trained_run, "--format", fmt, "--out", out), 1, "the disk is full")
        assert not (tmp_path / tmp).is_symlink() and not out.exists() and not Path(f"{out}.json").exists()
        assert list(tmp_path.iterdir()) == []  # no temporary file left, no ONNX weights file either


def test_export_refuses_a_network_over_the_onnx_limit_naming_its_size(tmp_path, trained_run, monkeypatch):
    # a network over protobuf's 2 GiB is refused, never written with its weights in other files
    t = load_trained(trained_run)
    weights = sum(v.numel() * v.element_size() for v in t.model.state_dict().values())
    monkeypatch.setattr("mdarts_rs.evaluate.trained.ONNX_MAX_BYTES", weights - 1)
    with pytest.raises(ExportError, match=f"net.onnx: the network's weights take {weights / 2**30:.2f} GiB, more"):
        export(t, "onnx", tmp_path / "net.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_cli_export_to_a_folder_it_cannot_write_names_the_file(tmp_path, trained_run, monkeypatch, code):
    # a read-only file system (or a folder without permission, a quota) refuses to make a file and to remove one
    # there; as root a chmod would not stop the export, so both are refused here as such a folder refuses them
    folder = tmp_path / "ro"
    folder.mkdir()
    real_open, real_unlink = open, os.unlink

    def refused(call):
        def inside(path, *args, **kwargs):
            if Path(path).parent == folder:
                raise OSError(code, os.strerror(code), str(path))
            return call(path, *args, **kwargs)

        return inside

    monkeypatch.setattr(run, "open", refused(real_open), raising=False)
    monkeypatch.setattr(os, "unlink", refused(real_unlink))
    r = invoke("export", "--checkpoint", trained_run, "--format", "torchscript", "--out", folder / "n.ts")
    said(r, 1, f"cannot write {folder / 'n.ts'}: {os.strerror(code)}")
    assert list(folder.iterdir()) == []


def _weights_of_a_wider_network(state) -> None:
    state["config"]["init_channels"] = 1024


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s["model"].update({"classifier.weight": 5}),
            "entry 'model' must be a mapping of names to tensors, but weight 'classifier.weight' is a int, not a tensor",
        ),
        (lambda s: s.update(config="x"), "entry 'config' must be a mapping, got str 'x'"),
        (lambda s: s["config"].update(bogus=1), "checkpoint.pt (its 'config'): unknown fields ['bogus']"),
        (lambda s: s.update(dataset="x"), "entry 'dataset' must be a mapping, got str 'x'"),
        (lambda s: s.update(test_indices=["a"]), "entry 'test_indices' must be a list of non-negative integers"),
        (lambda s: s.update(genotype="junk"), "entry 'genotype' is not a genotype (cannot parse genotype"),
        (lambda s: s.update(data=5), "entry 'data' must be text, got int 5"),
        (_weights_of_a_wider_network, "its settings describe its network (C = 1024, 5 cells) of at least"),
    ],
)
@pytest.mark.parametrize("command", ["export", "predict", "test"])
def test_cli_damaged_training_checkpoints_are_named_with_the_entry(tmp_path, trained_run, change, message, command):
    ckpt = _copy(trained_run, tmp_path / "run")
    state = torch.load(ckpt, weights_only=True)
    change(state)
    torch.save(state, ckpt)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    args = {
        "export": ["--format", "pt2", "--out", tmp_path / "net.pt2"],
        "predict": [tmp_path / "a.png"],
        "test": ["--device", "cpu"],
    }[command]
    said(invoke(command, "--checkpoint", ckpt, *args), 1, f"{ckpt}", message)


@pytest.mark.parametrize("command", ["export", "predict", "test"])
def test_cli_a_checkpoint_of_a_network_too_large_for_the_memory_says_so(tmp_path, trained_run, monkeypatch, command):
    monkeypatch.setattr("mdarts_rs.memory.available_bytes", lambda device: 2**10)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    args = {"export": ["--format", "pt2", "--out", tmp_path / "n.pt2"], "predict": [tmp_path / "a.png"], "test": []}
    r = invoke(command, "--checkpoint", trained_run, *args[command])
    said(r, 1, f"{trained_run}: its network (C = 4, 5 cells) needs at least about", "more than the 1 KiB free on cpu")


def test_eval_network_names_what_it_takes():
    with pytest.raises(TypeError, match="genotype must be a Genotype or MultiLevelGenotype .* got NoneType"):
        eval_network(None)
