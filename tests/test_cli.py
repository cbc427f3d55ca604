"""The command line: space and sample."""

import json

from click.testing import CliRunner

import mdarts_rs as md
from mdarts_rs.cli import main


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
