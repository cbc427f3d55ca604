"""Extreme integers and floats at every sized argument of the Rust extension (issue 17, item 4).

Each call must either succeed or raise a normal Python exception: an ``MdartsError`` subclass whose
message names the argument (and the limit, for a size above one), or pyo3's own ``OverflowError`` for a
value outside the Rust integer type. Never ``pyo3_runtime.PanicException`` (a ``BaseException``), a hang
or a giant allocation: limits are checked before anything is allocated, which the broadcast arrays below
(claiming 2**40 images without holding them) would expose.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mdarts_rs import _core as core

U64 = 2**64
# Edges of the integer types pyo3 converts to (u64/usize, i64) and of the limits.
EDGES = [
    0,
    1,
    2,
    3,
    4,
    5,
    31,
    32,
    33,
    64,
    65,
    1000,
    1001,
    65_536,
    65_537,
    1_000_000,
    1_000_001,
    2**31 - 1,
    2**31,
    2**32,
    2**62,
    2**63 - 1,
    2**63,
    U64 - 1,
    U64,
    2**100,
    -1,
    -(2**31),
    -(2**63),
    -(2**64),
]
INTS = st.sampled_from(EDGES) | st.integers(min_value=-(2**70), max_value=2**70)
FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-18, 5e-324, 1e308, -1.0, 0.5, 1.0, 1.0 + 2**-52])
FAST = settings(max_examples=40, deadline=None)

ALL_LIMITS = (
    "MAX_LAYERS",
    "MAX_IMAGES",
    "MAX_BATCH_SIZE",
    "MAX_WORKERS",
    "MAX_PREFETCH",
    "MAX_CROP_PADDING",
    "MAX_CUTOUT",
)


def call(f, *args, **kwargs):
    """``(result, None)`` or ``(None, exception)``; fails the test on a panic or an unexpected exception."""
    try:
        return f(*args, **kwargs), None
    except BaseException as e:  # PanicException derives from BaseException, not Exception
        assert type(e).__name__ != "PanicException", f"{f.__name__} panicked: {e}"
        assert isinstance(e, (core.MdartsError, OverflowError, TypeError)), f"{f.__name__} raised {e!r}"
        return None, e


def fits_u64(v: int) -> bool:
    return 0 <= v < U64


def expect_overflow(err: BaseException | None) -> None:
    assert isinstance(err, OverflowError), f"expected pyo3's OverflowError, got {err!r}"


def expect(err: BaseException | None, kind: type, *words: str) -> None:
    assert isinstance(err, kind), f"expected {kind.__name__}, got {err!r}"
    for w in words:
        assert w in str(err), f"{w!r} not in {str(err)!r}"


def test_limits_are_exported_and_sane():
    assert [getattr(core, n) for n in ALL_LIMITS] == [1000, 1_000_000, 65_536, 256, 64, 32, 32]


# The two calls of the issue that panicked with 'capacity overflow'.
def test_known_capacity_overflows_are_errors():
    _, err = call(core.AlphaLayout, "multilevel", 2**63)
    expect(err, core.SearchSpaceError, "layers = 9223372036854775808", "1000", "MAX_LAYERS")
    _, err = call(core.AlphaLayout, "shared", 1_000_000_000)
    expect(err, core.SearchSpaceError, "layers = 1000000000", "limit of 1000 cells")
    _, err = call(core.search_split, 2**62, 1e-18)
    expect(err, core.DataFormatError, "n = 4611686018427387904", "limit of 1000000 images", "MAX_IMAGES")


@FAST
@given(layers=INTS, mode=st.sampled_from(["shared", "multilevel"]))
def test_alpha_layout_layers(layers, mode):
    layout, err = call(core.AlphaLayout, mode, layers)
    if not fits_u64(layers):
        expect_overflow(err)
    elif layers > core.MAX_LAYERS:
        expect(err, core.SearchSpaceError, f"layers = {layers}", str(core.MAX_LAYERS))
    elif layers < (5 if mode == "multilevel" else 3):
        expect(err, core.SearchSpaceError, "at least")
    else:
        assert err is None and layout.layers == layers


@FAST
@given(layers=INTS)
def test_reduction_indices_layers(layers):
    got, err = call(core.reduction_indices, layers)
    if not fits_u64(layers):
        expect_overflow(err)
    elif layers > core.MAX_LAYERS:
        expect(err, core.SearchSpaceError, f"layers = {layers}", str(core.MAX_LAYERS))
    else:
        assert err is None and got == (layers // 3, 2 * layers // 3)


@FAST
@given(rank=INTS)
def test_unrank_cell_rank(rank):
    cell, err = call(core.unrank_cell, rank)
    if not fits_u64(rank):
        expect_overflow(err)
    elif rank >= core.derived_cell_count():
        expect(err, core.SearchSpaceError, f"rank {rank} is outside")
    else:
        assert err is None and core.rank_cell(cell) == rank


@FAST
@given(rank=INTS | st.integers(min_value=0, max_value=2**400), mode=st.sampled_from(["shared", "multilevel"]))
def test_unrank_genotype_rank(rank, mode):
    g, err = call(core.unrank_genotype, rank, mode)
    if rank < 0:
        expect_overflow(err)
    elif rank >= core.search_space_size(mode, derived=True):
        expect(err, core.SearchSpaceError, "rank", "is outside the space")
    else:
        assert err is None and core.rank_genotype(g) == rank


def test_unrank_genotype_huge_rank_has_a_short_message():
    _, err = call(core.unrank_genotype, 2**1_000_000)
    expect(err, core.SearchSpaceError, "rank of 1000001 bits is outside the space")
    assert len(str(err)) < 200


@FAST
@given(seed=INTS, mode=st.sampled_from(["shared", "multilevel"]))
def test_sample_seed(seed, mode):
    cell, err = call(core.sample_cell, seed)
    g, err2 = call(core.sample_genotype, seed, mode)
    if not fits_u64(seed):
        expect_overflow(err)
        expect_overflow(err2)
    else:
        assert err is None and err2 is None
        assert core.rank_cell(cell) < core.derived_cell_count() and g.alpha_mode == mode


@FAST
@given(node=st.integers(0, 7), value=INTS)
def test_cell_genotype_edge_inputs_and_concat(node, value):
    edges = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)] * 4
    edges[node] = ("skip_connect", value)
    cell, err = call(core.CellGenotype, edges)
    _, multi_err = call(core.MultiLevelGenotype, *[edges] * 5)
    if not fits_u64(value):
        # A cell argument is a CellGenotype or a list, so pyo3 wraps its OverflowError in a TypeError.
        expect(multi_err, TypeError, "normal_low", "OverflowError")
    elif err is not None:
        expect(multi_err, core.GenotypeError, f"normal_low.edges[{node | 1 if 'both edges' in str(err) else node}]")
    else:
        assert multi_err is None
    if not fits_u64(value):
        expect_overflow(err)
    elif value >= 2 + node // 2:  # node 2 + node // 2 reads only earlier nodes
        expect(err, core.GenotypeError, f"cell.edges[{node}]", "can only read earlier nodes")
    elif value == edges[node ^ 1][1]:  # the duplicate is reported at the pair's second edge
        expect(err, core.GenotypeError, f"cell.edges[{node | 1}]", "both edges")
    else:
        assert err is None and cell.edges[node] == ("skip_connect", value)
    _, err = call(core.CellGenotype, [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)] * 4, [2, 3, value])
    if not fits_u64(value):
        expect_overflow(err)
    elif value in (2, 3) or not 2 <= value <= 5:
        expect(err, core.GenotypeError, "concat")
    else:
        assert err is None


@FAST
@given(value=st.sampled_from(EDGES) | st.integers(min_value=0, max_value=10**40))
def test_genotype_text_numbers(value):
    text = (
        f"Genotype(normal=[('sep_conv_3x3', {value})] , normal_concat=range(2, {value}), "
        "reduce=[], reduce_concat=[2, 3, 4, 5])"
    ).replace("-", "")
    _, err = call(core.parse_genotype, text)
    expect(err, core.GenotypeError)
    _, err = call(core.Genotype.from_json, '{"normal": {"edges": [["sep_conv_3x3", %d]], "concat": [2]}}' % value)
    expect(err, core.GenotypeError)


def test_derive_cell_does_not_copy_a_wrong_shaped_broadcast_table():
    huge = np.broadcast_to(np.float64(0.5), (2**40, 8))
    _, err = call(core.derive_cell, huge)
    expect(err, core.DeriveError, "shape (14, 8), got [1099511627776, 8]")
    _, err = call(core.derive_genotype, {"normal": huge, "reduce": huge})
    expect(err, core.DeriveError, "normal", "1099511627776")


@FAST
@given(n=INTS, portion=FLOATS, seed=INTS)
def test_search_split_n_portion_seed(n, portion, seed):
    got, err = call(core.search_split, n, portion, seed)
    if not (fits_u64(n) and fits_u64(seed)):
        expect_overflow(err)
    elif n > core.MAX_IMAGES:
        expect(err, core.DataFormatError, f"n = {n}", str(core.MAX_IMAGES))
    elif not 0 < portion <= 1:
        expect(err, core.DataFormatError, "portion")
    elif int(portion * n) // 2 == 0:
        expect(err, core.DataFormatError, "leaves no image")
    else:
        train, val = got
        assert len(train) == len(val) == int(portion * n) // 2


IMAGES = np.arange(2 * 3 * 32 * 32, dtype=np.uint8).reshape(2, 3, 32, 32)
LABELS = np.array([3, 7], dtype=np.int64)
# BatchLoader's sized arguments in the order it checks them, their limits and the smallest allowed value.
LOADER_ARGS = {
    "batch_size": (core.MAX_BATCH_SIZE, 1),
    "workers": (core.MAX_WORKERS, 0),
    "prefetch": (core.MAX_PREFETCH, 1),
    "crop_padding": (core.MAX_CROP_PADDING, 0),
    "cutout": (core.MAX_CUTOUT, 0),
}


@FAST
@given(arg=st.sampled_from(["seed", "epoch", "batch", "crop_padding", "cutout"]), value=INTS)
def test_augment_images_arguments(arg, value):
    out, err = call(core.augment_images, IMAGES, **{arg: value})
    limit = {"crop_padding": core.MAX_CROP_PADDING, "cutout": core.MAX_CUTOUT}.get(arg)
    if not fits_u64(value):
        expect_overflow(err)
    elif limit is not None and value > limit:
        expect(err, core.DataFormatError, f"{arg} = {value}", f"limit of {limit}")
    else:
        assert err is None and out.shape == (2, 3, 32, 32)


def test_augment_images_refuses_a_huge_broadcast_batch_before_copying():
    huge = np.broadcast_to(IMAGES[:1], (2**40, 3, 32, 32))
    _, err = call(core.augment_images, huge)
    expect(err, core.DataFormatError, "len(images) = 1099511627776", "limit of 1000000 images")


@FAST
@given(arg=st.sampled_from([*LOADER_ARGS, "seed"]), value=INTS)
def test_batch_loader_arguments(arg, value):
    kwargs = {"batch_size": 1, arg: value}
    loader, err = call(core.BatchLoader, IMAGES, LABELS, drop_last=False, **kwargs)
    limit, least = LOADER_ARGS.get(arg, (U64 - 1, 0))
    if not fits_u64(value):
        expect_overflow(err)
    elif value > limit:
        expect(err, core.DataFormatError, f"{arg} = {value}", f"limit of {limit}")
    elif value < least:
        expect(err, core.DataFormatError, f"{arg} must be positive")
    else:
        assert err is None and loader.batch_size == kwargs["batch_size"]
        x, y = next(iter(loader.epoch(0)))
        assert x.shape[0] == y.shape[0] == min(kwargs["batch_size"], 2)


@FAST
@given(index=INTS.filter(lambda v: -(2**63) <= v < 2**63))
def test_batch_loader_indices(index):
    loader, err = call(core.BatchLoader, IMAGES, LABELS, np.array([0, index], dtype=np.int64), batch_size=1)
    if 0 <= index < 2:
        assert err is None and loader.num_images == 2
    else:
        expect(err, core.DataFormatError, f"indices[1] = {index} is out of range")


def test_batch_loader_refuses_huge_broadcast_inputs_before_copying():
    many = np.broadcast_to(IMAGES[:1], (2**40, 3, 32, 32))
    labels = np.broadcast_to(np.int64(1), (2**40,))
    _, err = call(core.BatchLoader, many, labels, batch_size=8)
    expect(err, core.DataFormatError, "len(images) = 1099511627776", "limit of 1000000 images")
    zeros = np.broadcast_to(np.int64(0), (2**40,))
    _, err = call(core.BatchLoader, IMAGES, LABELS, zeros, batch_size=8)
    expect(err, core.DataFormatError, "len(indices) = 1099511627776", "limit of 1000000 images")


@FAST
@given(epoch=INTS, start=INTS)
def test_epoch_epoch_and_start(epoch, start):
    loader = core.BatchLoader(IMAGES, LABELS, batch_size=1, workers=2)
    it, err = call(loader.epoch, epoch, start)
    if not (fits_u64(epoch) and fits_u64(start)):
        expect_overflow(err)
    else:
        assert err is None and len(it) == max(0, len(loader) - start)
        assert len(list(it)) == max(0, len(loader) - start)


@FAST
@given(INTS, INTS)
def test_edge_index_is_a_row_or_a_search_space_error(node, inp):
    row, err = call(core.edge_index, node, inp)
    if not (fits_u64(node) and fits_u64(inp)):
        expect_overflow(err)
    elif node < core.STEPS and inp < 2 + node:
        assert err is None and row == sum(2 + n for n in range(node)) + inp
    else:
        expect(err, core.SearchSpaceError, f"no edge ({node}, {inp})")
