"""Type stubs of the Rust extension ``mdarts_rs._core`` (checked by mypy.stubtest in the tests)."""

import os
from collections.abc import Sequence
from typing import Final, final

import numpy as np
import numpy.typing as npt

PRIMITIVES: Final[list[str]]
NUM_EDGES: Final[int]
STEPS: Final[int]
__version__: Final[str]

# Limits on caller-supplied sizes, checked before anything is allocated; a larger value raises an
# MdartsError subclass naming the argument and the limit.
MAX_LAYERS: Final[int]  # cells of a network or α layout (DARTS: 8 searched, 20 evaluated)
MAX_IMAGES: Final[int]  # images one call splits, augments or loads into a BatchLoader
MAX_BATCH_SIZE: Final[int]  # BatchLoader batch_size
MAX_WORKERS: Final[int]  # BatchLoader worker threads
MAX_PREFETCH: Final[int]  # BatchLoader batches queued per worker
MAX_CROP_PADDING: Final[int]  # crop_padding of augment_images and BatchLoader
MAX_CUTOUT: Final[int]  # cutout square side of augment_images and BatchLoader
# (crop_padding and cutout are limited by the image side in general; these are the limits at 32 pixels)
MAX_SIDE: Final[int]  # image side of augment_images and BatchLoader
MAX_IMAGE_CHANNELS: Final[int]  # image channels of augment_images and BatchLoader
MAX_PIXELS: Final[int]  # pixels of an image file decode_images reads, as decoded and as resized

class MdartsError(ValueError): ...
class SearchSpaceError(MdartsError): ...
class GenotypeError(MdartsError): ...
class DeriveError(MdartsError): ...
class DataFormatError(MdartsError): ...

_Weights = npt.NDArray[np.float64] | npt.NDArray[np.float32]
_Edges = list[tuple[str, int]]

@final
class AlphaLayout:
    def __new__(cls, alpha_mode: str, layers: int) -> AlphaLayout: ...
    @property
    def alpha_mode(self) -> str: ...
    @property
    def layers(self) -> int: ...
    @property
    def tables(self) -> list[str]: ...
    @property
    def cell_tables(self) -> list[str]: ...
    @property
    def reduction(self) -> list[bool]: ...
    @property
    def levels(self) -> list[str]: ...

@final
class CellGenotype:
    def __new__(cls, edges: _Edges, concat: list[int] | None = None) -> CellGenotype: ...
    @property
    def edges(self) -> _Edges: ...
    @property
    def concat(self) -> list[int]: ...
    def op_counts(self) -> dict[str, int]: ...
    def __hash__(self) -> int: ...

@final
class Genotype:
    def __new__(
        cls,
        normal: CellGenotype | _Edges,
        reduce: CellGenotype | _Edges,
        normal_concat: list[int] | None = None,
        reduce_concat: list[int] | None = None,
    ) -> Genotype: ...
    @staticmethod
    def from_darts(text: str) -> Genotype: ...
    @staticmethod
    def from_json(text: str) -> Genotype: ...
    def to_darts(self) -> str: ...
    def to_json(self) -> str: ...
    def to_multilevel(self) -> MultiLevelGenotype: ...
    @property
    def alpha_mode(self) -> str: ...
    @property
    def cells(self) -> dict[str, CellGenotype]: ...
    @property
    def normal(self) -> CellGenotype: ...
    @property
    def reduce(self) -> CellGenotype: ...

@final
class MultiLevelGenotype:
    def __new__(
        cls,
        normal_low: CellGenotype | _Edges,
        reduce_low: CellGenotype | _Edges,
        normal_mid: CellGenotype | _Edges,
        reduce_mid: CellGenotype | _Edges,
        normal_high: CellGenotype | _Edges,
    ) -> MultiLevelGenotype: ...
    @staticmethod
    def parse(text: str) -> MultiLevelGenotype: ...
    @staticmethod
    def from_json(text: str) -> MultiLevelGenotype: ...
    @staticmethod
    def from_text(text: str) -> MultiLevelGenotype: ...
    def to_text(self) -> str: ...
    def to_json(self) -> str: ...
    @property
    def alpha_mode(self) -> str: ...
    @property
    def cells(self) -> dict[str, CellGenotype]: ...
    @property
    def normal_low(self) -> CellGenotype: ...
    @property
    def reduce_low(self) -> CellGenotype: ...
    @property
    def normal_mid(self) -> CellGenotype: ...
    @property
    def reduce_mid(self) -> CellGenotype: ...
    @property
    def normal_high(self) -> CellGenotype: ...

def search_space_size(alpha_mode: str = "multilevel", derived: bool = False) -> int: ...
def derived_cell_count() -> int: ...
def reduction_indices(layers: int) -> tuple[int, int]: ...
def edge_index(node: int, input: int) -> int: ...
def parse_genotype(text: str) -> Genotype | MultiLevelGenotype: ...
def derive_cell(weights: _Weights, table: str = "cell", max_skip: int | None = None) -> CellGenotype: ...
def derive_genotype(tables: dict[str, _Weights], max_skip: int | None = None) -> Genotype | MultiLevelGenotype: ...
def rank_cell(cell: CellGenotype) -> int: ...
def unrank_cell(rank: int) -> CellGenotype: ...
def rank_genotype(genotype: Genotype | MultiLevelGenotype) -> int: ...
def unrank_genotype(rank: int, alpha_mode: str = "multilevel") -> Genotype | MultiLevelGenotype: ...
def sample_cell(seed: int) -> CellGenotype: ...
def sample_genotype(seed: int, alpha_mode: str = "multilevel") -> Genotype | MultiLevelGenotype: ...

CIFAR10_MEAN: Final[list[float]]
CIFAR10_STD: Final[list[float]]

def load_cifar10_bin(
    root: str | os.PathLike[str], split: str = "train"
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]: ...
def load_cifar100_bin(
    root: str | os.PathLike[str], split: str = "train", label: str = "fine"
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]: ...
def decode_images(
    paths: Sequence[str | os.PathLike[str]], out: npt.NDArray[np.uint8], workers: int = 2
) -> list[tuple[int, str]]: ...
def search_split(
    n: int, portion: float = 1.0, seed: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
def augment_images(
    images: npt.NDArray[np.uint8],
    seed: int = 0,
    epoch: int = 0,
    batch: int = 0,
    crop_padding: int = 4,
    flip: bool = True,
    cutout: int = 0,
    normalize: bool = True,
    channels_last: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> npt.NDArray[np.float32] | npt.NDArray[np.uint8]: ...

@final
class BatchLoader:
    def __new__(
        cls,
        images: npt.NDArray[np.uint8],
        labels: npt.NDArray[np.int64],
        indices: npt.NDArray[np.int64] | None = None,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        crop_padding: int = 4,
        flip: bool = True,
        cutout: int = 0,
        normalize: bool = True,
        channels_last: bool = False,
        seed: int = 0,
        workers: int = 2,
        prefetch: int = 2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        num_classes: int = 10,
    ) -> BatchLoader: ...
    def __len__(self) -> int: ...
    @property
    def num_images(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    def epoch(self, epoch: int, start: int = 0) -> EpochIterator: ...

@final
class EpochIterator:
    def __iter__(self) -> EpochIterator: ...
    def __next__(self) -> tuple[npt.NDArray[np.float32] | npt.NDArray[np.uint8], npt.NDArray[np.int64]]: ...
    def __len__(self) -> int: ...

def kernel_sources() -> list[tuple[str, str]]: ...

__all__ = [
    "MdartsError",
    "SearchSpaceError",
    "GenotypeError",
    "DeriveError",
    "DataFormatError",
    "PRIMITIVES",
    "NUM_EDGES",
    "STEPS",
    "__version__",
    "MAX_LAYERS",
    "MAX_IMAGES",
    "MAX_BATCH_SIZE",
    "MAX_WORKERS",
    "MAX_PREFETCH",
    "MAX_CROP_PADDING",
    "MAX_CUTOUT",
    "MAX_SIDE",
    "MAX_IMAGE_CHANNELS",
    "MAX_PIXELS",
    "AlphaLayout",
    "CellGenotype",
    "Genotype",
    "MultiLevelGenotype",
    "search_space_size",
    "derived_cell_count",
    "reduction_indices",
    "edge_index",
    "parse_genotype",
    "derive_cell",
    "derive_genotype",
    "rank_cell",
    "unrank_cell",
    "rank_genotype",
    "unrank_genotype",
    "sample_cell",
    "sample_genotype",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "load_cifar10_bin",
    "load_cifar100_bin",
    "decode_images",
    "search_split",
    "augment_images",
    "BatchLoader",
    "EpochIterator",
    "kernel_sources",
]
