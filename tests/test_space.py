"""Search space: primitives, α layouts and exact sizes against closed forms and published magnitudes."""

import math

import pytest

import mdarts_rs as md


def test_primitives_are_darts_order():
    assert md.PRIMITIVES == [
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "sep_conv_3x3",
        "sep_conv_5x5",
        "dil_conv_3x3",
        "dil_conv_5x5",
    ]
    assert md.NUM_EDGES == 14 and md.STEPS == 4


def test_space_sizes_equal_closed_forms():
    cell_derived = math.comb(2, 2) * math.comb(3, 2) * math.comb(4, 2) * math.comb(5, 2) * 7**8
    assert md.derived_cell_count() == cell_derived
    assert md.search_space_size("shared", derived=False) == 8 ** (14 * 2)
    assert md.search_space_size("multilevel", derived=False) == 8 ** (14 * 5)
    assert md.search_space_size("shared", derived=True) == cell_derived**2
    assert md.search_space_size("multilevel", derived=True) == cell_derived**5


@pytest.mark.parametrize(
    ("mode", "derived", "power"),
    [("shared", False, 25), ("shared", True, 18), ("multilevel", False, 63), ("multilevel", True, 45)],
)
def test_space_sizes_match_published_orders_of_magnitude(mode, derived, power):
    assert int(math.log10(md.search_space_size(mode, derived=derived))) == power


def test_layout_multilevel_eight_cells():
    layout = md.AlphaLayout("multilevel", 8)
    assert layout.tables == ["normal_low", "reduce_low", "normal_mid", "reduce_mid", "normal_high"]
    assert layout.reduction == [False, False, True, False, False, True, False, False]
    assert layout.cell_tables == [
        "normal_low",
        "normal_low",
        "reduce_low",
        "normal_mid",
        "normal_mid",
        "reduce_mid",
        "normal_high",
        "normal_high",
    ]
    assert layout.levels == ["low", "low", "low", "mid", "mid", "mid", "high", "high"]


def test_layout_shared_reads_two_tables():
    layout = md.AlphaLayout("shared", 8)
    assert layout.tables == ["normal", "reduce"]
    assert layout.cell_tables[2] == layout.cell_tables[5] == "reduce"
    assert set(layout.cell_tables) == {"normal", "reduce"}


@pytest.mark.parametrize("layers", [5, 8, 14, 20])
def test_layout_reductions_at_thirds(layers):
    layout = md.AlphaLayout("multilevel", layers)
    assert [i for i, r in enumerate(layout.reduction) if r] == list(md.reduction_indices(layers))
    assert md.reduction_indices(layers) == (layers // 3, 2 * layers // 3)


def test_layout_rejects_bad_requests():
    with pytest.raises(
        md.SearchSpaceError, match="a multilevel network of 4 cells has no cell for table .*: it needs at least 5 cells"
    ):
        md.AlphaLayout("multilevel", 4)
    with pytest.raises(md.SearchSpaceError, match="unknown alpha mode 'flat'"):
        md.AlphaLayout("flat", 8)
    with pytest.raises(ValueError):
        md.search_space_size("nope")
