"""Genotypes: published texts, JSON and text round trips, conversion and validation errors."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mdarts_rs as md

from published import ALL, DARTS_V2


@pytest.mark.parametrize("name", sorted(ALL))
def test_genotype_published_round_trip(name):
    g = md.Genotype.from_darts(ALL[name])
    assert md.Genotype.from_darts(g.to_darts()) == g
    assert md.Genotype.from_json(g.to_json()) == g
    assert g.normal.concat == [2, 3, 4, 5]
    assert len(g.normal.edges) == 8


def test_genotype_darts_v2_cells():
    g = md.Genotype.from_darts(DARTS_V2)
    assert g.normal.edges[:2] == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]
    assert g.normal.op_counts()["skip_connect"] == 2
    assert g.reduce.op_counts()["max_pool_3x3"] == 5
    assert g.alpha_mode == "shared"
    assert set(g.cells) == {"normal", "reduce"}


def test_genotype_darts_to_multilevel_repeats_cells():
    g = md.Genotype.from_darts(DARTS_V2)
    ml = g.to_multilevel()
    assert ml.normal_low == ml.normal_mid == ml.normal_high == g.normal
    assert ml.reduce_low == ml.reduce_mid == g.reduce
    assert md.MultiLevelGenotype.from_json(g.to_json()) == ml
    assert md.MultiLevelGenotype.parse(DARTS_V2) == ml
    assert md.MultiLevelGenotype.from_text(ml.to_text()) == ml


def test_genotype_json_layout():
    d = json.loads(md.Genotype.from_darts(DARTS_V2).to_multilevel().to_json())
    assert d["alpha_mode"] == "multilevel"
    assert d["cells"]["normal_mid"]["edges"][0] == ["sep_conv_3x3", 0]
    assert d["cells"]["reduce_mid"]["concat"] == [2, 3, 4, 5]


def test_genotype_constructor_accepts_edge_lists():
    g = md.Genotype.from_darts(DARTS_V2)
    assert md.Genotype(normal=g.normal.edges, reduce=g.reduce.edges, normal_concat=range(2, 6)) == g
    ml = md.MultiLevelGenotype(g.normal, g.reduce, g.normal, g.reduce, g.normal.edges)
    assert ml == g.to_multilevel()


def test_genotype_edge_order_within_node_does_not_matter():
    a = md.CellGenotype([("sep_conv_3x3", 0), ("skip_connect", 1)] * 4)
    b = md.CellGenotype([("skip_connect", 1), ("sep_conv_3x3", 0)] * 4)
    assert a == b and hash(a) == hash(b)


BASE = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)] * 4


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ([("conv_7x7", 0)] + BASE[1:], r"cell.edges\[0\]: unknown op 'conv_7x7'"),
        (BASE[:3] + [("none", 1)] + BASE[4:], r"cell.edges\[3\]: 'none' cannot be an edge"),
        (BASE[:1] + [("sep_conv_3x3", 2)] + BASE[2:], r"cell.edges\[1\]: node 2 can only read earlier nodes"),
        (BASE[:6], r"a cell has 8 edges"),
        (BASE[:6] + [("skip_connect", 3), ("skip_connect", 3)], r"both edges of node 5 read node 3"),
    ],
)
def test_genotype_invalid_cells_are_refused(edges, message):
    with pytest.raises(md.GenotypeError, match=message):
        md.CellGenotype(edges)


def test_genotype_invalid_text_and_json_are_refused():
    with pytest.raises(md.GenotypeError, match="cannot parse genotype"):
        md.Genotype.from_darts("Genotype(normal=[('sep_conv_3x3', 0)")
    with pytest.raises(md.GenotypeError, match="invalid JSON"):
        md.Genotype.from_json("{")
    with pytest.raises(md.GenotypeError, match=r"cells.normal_low: missing"):
        md.MultiLevelGenotype.from_json('{"alpha_mode": "multilevel", "cells": {}}')
    with pytest.raises(md.GenotypeError, match="multi-level genotype"):
        md.Genotype.from_json(md.Genotype.from_darts(DARTS_V2).to_multilevel().to_json())
    bad = json.loads(md.Genotype.from_darts(DARTS_V2).to_json())
    bad["cells"]["reduce"]["edges"][4] = ["none", 0]
    with pytest.raises(md.GenotypeError, match=r"reduce.edges\[4\]: 'none'"):
        md.Genotype.from_json(json.dumps(bad))
    with pytest.raises(md.MdartsError):
        md.Genotype.from_darts("Genotype(normal=[], normal_concat=[9], reduce=[])")
    assert issubclass(md.GenotypeError, ValueError)


def test_genotype_files(tmp_path):
    g = md.Genotype.from_darts(DARTS_V2).to_multilevel()
    md.save_genotype(g, tmp_path / "g.json")
    assert md.load_genotype(tmp_path / "g.json") == g
    (tmp_path / "darts.txt").write_text(DARTS_V2)
    assert md.load_genotype(tmp_path / "darts.txt") == md.Genotype.from_darts(DARTS_V2)
    assert md.load_genotype(DARTS_V2) == md.Genotype.from_darts(DARTS_V2)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        md.load_genotype(tmp_path / "nope.json")
    for missing in (tmp_path / "search(1)" / "genotype.json", "run (2).json", "search(1)"):
        with pytest.raises(FileNotFoundError, match=r"no such genotype file"):
            md.load_genotype(missing)
    with pytest.raises(md.GenotypeError, match="cannot parse genotype"):
        md.load_genotype("Genotype(normal=(")  # text with a typo stays a parse error
    (tmp_path / "bad.json").write_text('{"alpha_mode": "x"}')
    with pytest.raises(md.GenotypeError, match="bad.json"):
        md.load_genotype(tmp_path / "bad.json")


@given(st.text(max_size=200))
def test_genotype_parser_never_panics(text):
    try:
        md.parse_genotype(text)
    except md.MdartsError:
        pass
