"""Derivation with DARTS' rule, from numpy tables of op weights."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import mdarts_rs as md

NONE = md.PRIMITIVES.index("none")


def derive_ref(w: np.ndarray) -> list[tuple[str, int]]:
    """DARTS' rule written directly from the paper: per node, the 2 edges with the strongest non-none op."""
    gene, start = [], 0
    for node in range(4):
        rows = w[start : start + node + 2]
        strength = [max(r[k] for k in range(8) if k != NONE) for r in rows]
        kept = sorted(range(node + 2), key=lambda j: -strength[j])[:2]
        for j in kept:
            k_best = max((k for k in range(8) if k != NONE), key=lambda k: (rows[j][k], -k))
            gene.append((md.PRIMITIVES[k_best], j))
        start += node + 2
    return gene


finite = st.floats(-1e6, 1e6, allow_nan=False, width=64)


@given(arrays(np.float64, (14, 8), elements=finite))
def test_derive_cell_matches_reference_rule(w):
    assert md.derive_cell(w).edges == derive_ref(w)


@given(arrays(np.float32, (14, 8), elements=st.floats(-10, 10, width=32)))
def test_derive_cell_accepts_float32(w):
    c = md.derive_cell(w)
    assert c.edges == derive_ref(w.astype(np.float64))


def test_derive_cell_prefers_strong_edges_over_none():
    w = np.full((14, 8), 0.01)
    w[:, NONE] = 0.9  # 'none' dominates every edge but is never kept
    w[9 + 4, md.PRIMITIVES.index("sep_conv_5x5")] = 0.5
    c = md.derive_cell(w)
    assert ("sep_conv_5x5", 4) == c.edges[6]
    assert all(op != "none" for op, _ in c.edges)


def test_derive_genotype_by_table_names():
    rng = np.random.default_rng(0)
    layout = md.AlphaLayout("multilevel", 8)
    tables = {t: rng.random((14, 8)) for t in layout.tables}
    g = md.derive_genotype(tables)
    assert isinstance(g, md.MultiLevelGenotype)
    assert g.normal_mid == md.derive_cell(tables["normal_mid"])
    shared = md.derive_genotype({"normal": tables["normal_low"], "reduce": tables["reduce_low"]})
    assert isinstance(shared, md.Genotype)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_derive_cell_rejects_non_finite(bad):
    w = np.ones((14, 8))
    w[3, 5] = bad
    with pytest.raises(md.DeriveError, match=r"edge 3, op 'sep_conv_5x5'"):
        md.derive_cell(w, table="normal_low")


def test_derive_rejects_bad_shapes_and_tables():
    with pytest.raises(md.DeriveError, match=r"shape \(14, 8\), got \[8, 14\]"):
        md.derive_cell(np.ones((8, 14)))
    with pytest.raises(md.DeriveError, match="match no layout"):
        md.derive_genotype({"normal": np.ones((14, 8))})
    with pytest.raises(TypeError):
        md.derive_cell(np.ones((14, 8), dtype=np.int64))
