"""The command line: space and sample; its options agree with the config dataclasses, and it refuses values
that would only fail later (non-finite numbers, sizes above their limits)."""

from __future__ import annotations

import dataclasses
import json

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import mdarts_rs as md
from mdarts_rs import DataFormatError, ops
from mdarts_rs.cli import main
from mdarts_rs.config import ConfigError, SearchConfig, TrainConfig
from mdarts_rs.search import run_search

from clicheck import invoke, said


def test_cli_space_prints_four_sizes():
    out = CliRunner().invoke(main, ["space"])
    assert out.exit_code == 0, out.output
    assert str(md.search_space_size("multilevel", derived=True)) in out.output
    assert str(md.search_space_size("shared", derived=False)) in out.output
    for p in ("10^25", "10^18", "10^63", "10^45"):
        assert p in out.output


def test_cli_sample_prints_valid_json():
    out = CliRunner().invoke(main, ["sample", "--seed", "3"])
    assert out.exit_code == 0, out.output
    g = md.MultiLevelGenotype.from_json(out.output)
    assert g == md.sample_genotype(3)
    assert json.loads(out.output)["alpha_mode"] == "multilevel"


def test_cli_rejects_bad_options():
    out = CliRunner().invoke(main, ["sample", "--alpha-mode", "flat"])
    assert out.exit_code == 2
    assert "flat" in out.output


#: Config fields that the CLI fills another way: the data folder (option, $MDARTS_DATA or the download cache)
#: and plots (--no-plots).
_NOT_OPTIONS = {"data", "plots"}


def _fields(cfg: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cfg)}


@pytest.mark.parametrize("command", ["search", "sweep"])
def test_cli_search_options_are_the_config_fields_with_their_defaults(command):
    # One place for each default: every option named after a SearchConfig field shows that field's default,
    # and every field a user may set has an option.
    params = {p.name: p for p in main.commands[command].params if isinstance(p, click.Option)}
    fields = _fields(SearchConfig)
    shared = set(params) & set(fields) - _NOT_OPTIONS
    for name in shared:
        default = fields[name].default
        assert params[name].default == (str(default) if name == "out" else default), name
    missing = set(fields) - set(params) - _NOT_OPTIONS - ({"gamma"} if command == "sweep" else set())
    assert not missing, f"SearchConfig fields without a {command} option: {sorted(missing)}"


def test_cli_train_options_are_the_config_fields():
    # train's options without a default take the recipe's (the config's own, or the ImageNet recipe's); those
    # with one show the config's
    params = {p.name: p for p in main.commands["train"].params if isinstance(p, click.Option)}
    fields = _fields(TrainConfig)
    missing = set(fields) - set(params)
    assert not missing, f"TrainConfig fields without a train option: {sorted(missing)}"
    for name in ("out", "seed", "device", "dataset"):
        default = fields[name].default
        assert params[name].default == (str(default) if name == "out" else default), name


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("search", ["--lr", "nan"]),
        ("search", ["--weight-decay", "inf"]),
        ("search", ["--gamma", "nan"]),
        ("search", ["--momentum", "nan"]),
        ("search", ["--arch-betas", "0.5", "nan"]),
        ("sweep", ["--gamma", "0,nan"]),
        ("sweep", ["--gamma", "1,inf"]),
        ("train", ["--genotype", "x", "--lr", "nan"]),
        ("train", ["--genotype", "x", "--drop-path", "nan"]),
    ],
)
def test_cli_refuses_non_finite_numbers_before_any_run(tmp_path, command, args):
    r = CliRunner().invoke(main, [command, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), *args])
    assert r.exit_code == 2, r.output
    assert "finite" in r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field", ["lr", "gamma", "arch_lr", "grad_clip"])
def test_config_refuses_non_finite_numbers(field):
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        SearchConfig(**{field: float("nan")})
    with pytest.raises(ValueError, match="arch_betas must be a finite number"):
        SearchConfig(arch_betas=(0.5, float("inf")))
    with pytest.raises(ValueError, match="weight_decay must be a finite number"):
        TrainConfig(weight_decay=float("inf"))


def test_cli_build_kernels_says_in_one_line_why_it_cannot(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    r = CliRunner().invoke(main, ["build-kernels"])
    assert r.exit_code == 1
    assert r.output.strip() == (
        "Error: could not build the CUDA kernels: this torch has no CUDA; the CUDA kernels need "
        "a CUDA build of torch (PyPI's default)"
    )


@pytest.mark.parametrize(
    ("error", "why"),
    [
        (
            OSError("CUDA_HOME environment variable is not set. Please set it to your CUDA install root."),
            "no CUDA compiler of torch's CUDA version was found",
        ),
        (RuntimeError("Ninja is required to load C++ extensions (pip install ninja to get it)"), "ninja is missing"),
        (
            RuntimeError("Error building extension 'x'\nstep 1\nfoo.cu:3: error: bad thing\nmore"),
            "foo.cu:3: error: bad thing",
        ),
    ],
)
def test_kernel_build_failure_is_one_line_naming_the_fallback(error, why):
    text = ops._build_failure(error)
    assert "\n" not in text and why in text
    assert "plain-torch references instead" in text and "mdarts-rs build-kernels" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "1000000000"], "1000"),
        (["--layers", str(2**64)], "1000"),
        (["--init-channels", "100000"], "1024"),
        (["--batch-size", str(2**40)], "65536"),
        (["--workers", "100000"], "256"),
        (["--seed", str(2**64)], str(2**64 - 1)),
        (["--seeds", f"1,{2**70}"], str(2**64 - 1)),
    ],
)
def test_cli_refuses_sizes_above_their_limits_before_allocating(tmp_path, args, message):
    r = CliRunner().invoke(main, ["search", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_config_refuses_sizes_above_their_limits():
    with pytest.raises(ValueError, match=r"layers = 1000000000 is above the limit of 1000 \(MAX_LAYERS\)"):
        SearchConfig(layers=10**9)
    with pytest.raises(ValueError, match=r"layers = 18446744073709551616 is above the limit of 1000 \(MAX_LAYERS\)"):
        SearchConfig(layers=2**64)
    with pytest.raises(ValueError, match=r"init_channels = 4096 is above the limit of 1024 \(MAX_CHANNELS\)"):
        TrainConfig(init_channels=4096)


def test_kernels_use_the_compiler_that_build_kernels_installed(tmp_path, monkeypatch):
    # a later process on a GPU machine without a toolkit finds the wheels `build-kernels` put into the cache;
    # without them it refuses to build (the caller warns and runs the references), not a CPU-only build for GPUs
    from torch.utils import cpp_extension

    from mdarts_rs.ops import build

    monkeypatch.setenv("MDARTS_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    monkeypatch.setattr(ops, "_state", {"loaded": None, "cuda": False, "error": None})
    assert build.cached_cuda_home() is None
    with pytest.raises(RuntimeError, match="no nvcc of torch's CUDA version was found"):
        ops.load_extension(with_cuda=True)
    assert "no CUDA compiler of torch's CUDA version was found" in ops._build_failure(
        RuntimeError("CUDA_HOME is not set")
    )
    home = tmp_path / "nvcc-13.0" / "nvidia" / "cu13"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_text("")
    assert build.cached_cuda_home() == home
    used = []
    monkeypatch.setattr(build, "use_cuda_home", lambda h, arch=None: used.append(h))
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: (_ for _ in ()).throw(OSError("stop before compiling")))
    with pytest.raises(OSError, match="stop before compiling"):
        ops.load_extension(with_cuda=True)
    assert used == [home]


@pytest.mark.parametrize(
    ("command", "setting"),
    [
        ("train", "lr"),
        ("search", "lr"),
        ("search", "lr_min"),
        ("search", "weight_decay"),
        ("search", "arch_weight_decay"),
    ],
)
def test_cli_floats_beyond_float32_name_the_setting(tmp_path, command, setting):
    genotype = ["--genotype", "darts_v2"] if command == "train" else []
    option = "--" + setting.replace("_", "-")
    r = invoke(command, *genotype, option, "1e308", "--data", tmp_path / "nowhere", "--out", tmp_path / "run")
    said(r, 2, f"{setting} = 1e+308 is beyond float32's range")
    assert not (tmp_path / "run").exists()


def test_library_inputs_of_the_wrong_kind_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"epochs must be an integer, got '5' \(str\)"):
        SearchConfig(epochs="5")
    cfg = SearchConfig(out=tmp_path / "run", device="cpu")
    labels = np.zeros(4, dtype=np.int64)
    with pytest.raises(DataFormatError, match=r"CIFAR-10 images have shape \(N, 3, 32, 32\), got a list"):
        run_search(cfg, [np.zeros((3, 32, 32), dtype=np.uint8)] * 4, labels)
    with pytest.raises(DataFormatError, match=r"got float32 \(4, 3, 32, 32\): pass a numpy uint8 array"):
        run_search(cfg, np.zeros((4, 3, 32, 32), dtype=np.float32), labels)
    with pytest.raises(DataFormatError, match=r"'labels' is float64 of shape \(4,\); expected 4 integers"):
        run_search(cfg, np.zeros((4, 3, 32, 32), dtype=np.uint8), [0.5, 1, 2, 3])
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
