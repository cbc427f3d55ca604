"""Runs from config files: --config takes every setting from a JSON or TOML file, options on the command line
override it, unknown keys and bad values are refused naming the key, --print-config writes a file that --config
reads back, and a run's config.json repeats the run exactly."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from mdarts_rs.cli import main
from mdarts_rs.config import ConfigError, ProtocolConfig, SearchConfig, TrainConfig, dump_settings, read_settings

from tinycifar import tiny_images, write_bin

TINY = "--epochs 1 --batch-size 4 --init-channels 4 --layers 5 --steps-per-epoch 2 --gap-images 8 --workers 1 --device cpu --quiet --no-plots".split()


def test_search_config_json_repeats_the_run_exactly(tmp_path):
    data = write_bin(tmp_path / "cifar", *tiny_images())
    first = tmp_path / "first"
    r = CliRunner().invoke(main, ["search", "--data", str(data), "--out", str(first), "--gamma", "0.5", *TINY])
    assert r.exit_code == 0, r.output
    again = tmp_path / "again"
    r = CliRunner().invoke(main, ["search", "--config", str(first / "config.json"), "--out", str(again)])
    assert r.exit_code == 0, r.output
    saved = [json.loads((d / "config.json").read_text()) for d in (first, again)]
    assert {k: v for k, v in saved[0].items() if k != "out"} == {k: v for k, v in saved[1].items() if k != "out"}
    assert (first / "genotype.json").read_text() == (again / "genotype.json").read_text()
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True)["model"] for d in (first, again))
    for name in a:
        if name.startswith("alphas."):
            assert torch.equal(a[name], b[name]), name


def test_options_override_the_file_and_print_config_round_trips(tmp_path):
    hand = tmp_path / "search.toml"
    hand.write_text('epochs = 9\nlr = 0.05\ngamma = 0.5\nalpha_mode = "shared"\narch_betas = [0.4, 0.9]\n')
    r = CliRunner().invoke(main, ["search", "--config", str(hand), "--lr", "0.01", "--print-config"])
    assert r.exit_code == 0, r.output
    printed = tmp_path / "printed.toml"
    printed.write_text(r.output)
    cfg = SearchConfig(**read_settings(printed, SearchConfig))
    assert (cfg.epochs, cfg.lr, cfg.gamma, cfg.alpha_mode, cfg.arch_betas) == (9, 0.01, 0.5, "shared", (0.4, 0.9))
    assert cfg.layers == SearchConfig().layers  # a default
    r = CliRunner().invoke(main, ["search", "--preset", "quick", "--print-config"])
    assert r.exit_code == 0 and json.loads(r.output)["layers"] == 5  # JSON without --config
    for cls in (SearchConfig, TrainConfig, ProtocolConfig):
        for fmt in ("json", "toml"):
            path = tmp_path / f"{cls.__name__}.{fmt}"
            path.write_text(dump_settings(cls(), fmt))
            assert cls(**read_settings(path, cls)) == cls(), (cls, fmt)


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ("epochs = 3\nbogus = 1\n", ".toml", "'bogus' is not a setting of SearchConfig"),
        ('epochs = "many"\n', ".toml", "epochs must be an integer, got 'many'"),
        ("epochs = [\n", ".toml", "not valid TOML"),
        ("[1, 2]", ".json", "holds a mapping of settings, not a list"),
        ('{"lr": -1}', ".json", "lr must be >= 0, got -1"),
    ],
)
def test_config_files_refuse_unknown_keys_and_bad_values_naming_them(tmp_path, text, suffix, message):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    r = CliRunner().invoke(main, ["search", "--config", str(path), "--print-config"])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output


def test_train_and_protocol_read_config_files(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('genotype = "DARTS_V2"\nepochs = 3\ncutout = 0\n')
    r = CliRunner().invoke(main, ["train", "--config", str(path), "--print-config", "--epochs", "4"])
    assert r.exit_code == 0, r.output
    (tmp_path / "printed.toml").write_text(r.output)  # printed in the file's format
    cfg = TrainConfig(**read_settings(tmp_path / "printed.toml", TrainConfig))
    assert (cfg.genotype, cfg.epochs, cfg.cutout, cfg.layers) == ("DARTS_V2", 4, 0, 20)
    path = tmp_path / "p.toml"
    path.write_text('preset = "tiny"\ngammas = [0.0, 1.0]\n\n[search]\nepochs = 2\n\n[train]\nepochs = 5\n')
    r = CliRunner().invoke(main, ["protocol", "--config", str(path), "--print-config", "--search-lr", "0.1"])
    assert r.exit_code == 0, r.output
    (tmp_path / "printed.toml").write_text(r.output)
    cfg = ProtocolConfig(**read_settings(tmp_path / "printed.toml", ProtocolConfig))
    assert cfg.gammas == (0.0, 1.0) and cfg.search == {"epochs": 2, "lr": 0.1} and cfg.train == {"epochs": 5}
    with pytest.raises(ConfigError, match="'bogus' is not a setting of TrainConfig"):
        path.write_text("bogus = 1\n")
        read_settings(path, TrainConfig)


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ('{"search": 5}', [], "'search' must be a mapping of search settings, got 5"),
        ('{"train": [1]}', [], "'train' must be a mapping of train settings, got [1]"),
        ('{"train": {"lr": 0}}', [], "train settings: lr must be > 0, got 0.0"),
        ('{"search": {"epochs": "x"}}', [], "search settings: epochs must be an integer, got 'x'"),
        ("{}", ["--train-lr", "1e308"], "train settings: lr = 1e+308 is beyond float32's range"),
        ("{}", ["--alpha-mode="], "expected comma-separated values, got nothing"),
        ("{}", ["--gamma", "1,,2"], "got '1,,2', which has an empty item"),
        ("{}", ["--gamma", "0,1,0"], "gammas must not repeat a value: 0.0 given twice"),
        ('{"seeds": [3, 3]}', [], "seeds must not repeat a value: 3 given twice"),
        ("{}", ["--train-layers", "3"], "train settings: a multilevel network of 3 cells has no cell for table"),
        ('{"train": {"genotype": "x"}}', [], "train settings ['genotype'] are decided by the protocol"),
    ],
)
def test_protocol_settings_of_every_run_are_checked_before_any_runs(tmp_path, text, args, message):
    path = tmp_path / "p.json"
    path.write_text(text)
    r = CliRunner().invoke(main, ["protocol", "--config", str(path), "--preset", "tiny", "--print-config", *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output


def test_protocol_run_settings_are_refused_when_the_protocol_is_made():
    # before run_protocol reads or writes anything: the settings of every stage's runs are checked with its own
    with pytest.raises(ConfigError, match="train settings: lr must be > 0"):
        ProtocolConfig(preset="tiny", train={"lr": 0.0})
    with pytest.raises(ConfigError, match="search settings: batch_size must be >= 1"):
        ProtocolConfig(preset="tiny", search={"batch_size": 0})


def test_a_config_file_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b"\xff\xfe{")
    r = CliRunner().invoke(main, ["search", "--config", str(path), "--print-config"])
    assert r.exit_code == 2 and f"{path}: not a text file (not UTF-8: byte 0xff at 0)" in r.output, r.output


@pytest.mark.parametrize(("fast", "supernet"), [(True, "batched"), (False, "plain")])
def test_settings_written_with_fast_choose_the_supernet(tmp_path, fast, supernet):
    # runs written before the batched supernet became the default said "fast"; both readers map it the same way
    saved = {**SearchConfig().to_json(), "fast": fast}
    del saved["supernet"]
    assert SearchConfig.from_json(saved).supernet == supernet
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    assert read_settings(path, SearchConfig)["supernet"] == supernet
