"""Rank/unrank bijection and uniform sampling."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mdarts_rs as md

CELLS = md.derived_cell_count()


@given(st.integers(0, CELLS - 1))
def test_enumerate_cell_round_trip(rank):
    assert md.rank_cell(md.unrank_cell(rank)) == rank


@given(st.data(), st.sampled_from(["shared", "multilevel"]))
def test_enumerate_genotype_round_trip(data, mode):
    rank = data.draw(st.integers(0, md.search_space_size(mode, derived=True) - 1))
    g = md.unrank_genotype(rank, mode)
    assert g.alpha_mode == mode
    assert md.rank_genotype(g) == rank


def test_enumerate_ends_of_space():
    assert md.unrank_cell(0).edges == [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4
    with pytest.raises(md.SearchSpaceError, match="outside the space"):
        md.unrank_cell(CELLS)
    size = md.search_space_size("multilevel", derived=True)
    with pytest.raises(md.SearchSpaceError):
        md.unrank_genotype(size, "multilevel")
    with pytest.raises(OverflowError):
        md.unrank_genotype(-1, "multilevel")


def test_enumerate_sampling_is_seeded_and_spread():
    assert md.sample_genotype(5) == md.sample_genotype(5)
    ranks = {md.rank_cell(md.sample_cell(s)) for s in range(200)}
    assert len(ranks) == 200
    # Uniform over [0, CELLS): the mean rank of 200 draws is near CELLS / 2 (std of the mean ≈ 0.02·CELLS).
    assert abs(sum(ranks) / len(ranks) / CELLS - 0.5) < 0.1
    assert isinstance(md.sample_genotype(1, "shared"), md.Genotype)
