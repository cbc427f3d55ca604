"""mdarts-rs: multi-level differentiable architecture search with heuristic entropy (Li, Chen, Sun 2021).

The search space, genotypes, derivation and enumeration live in the Rust core (``mdarts_rs._core``) and are
re-exported here; the supernet, search and evaluation are PyTorch modules built on top.
"""

from mdarts_rs._core import (
    NUM_EDGES,
    PRIMITIVES,
    STEPS,
    AlphaLayout,
    CellGenotype,
    DataFormatError,
    DeriveError,
    Genotype,
    GenotypeError,
    MdartsError,
    MultiLevelGenotype,
    SearchSpaceError,
    __version__,
    derive_cell,
    derive_genotype,
    derived_cell_count,
    parse_genotype,
    rank_cell,
    rank_genotype,
    reduction_indices,
    sample_cell,
    sample_genotype,
    search_space_size,
    unrank_cell,
    unrank_genotype,
)
from mdarts_rs.genotype import load_genotype, save_genotype

__all__ = [
    "NUM_EDGES",
    "PRIMITIVES",
    "STEPS",
    "AlphaLayout",
    "CellGenotype",
    "DataFormatError",
    "DeriveError",
    "Genotype",
    "GenotypeError",
    "MdartsError",
    "MultiLevelGenotype",
    "SearchSpaceError",
    "__version__",
    "derive_cell",
    "derive_genotype",
    "derived_cell_count",
    "load_genotype",
    "parse_genotype",
    "rank_cell",
    "rank_genotype",
    "reduction_indices",
    "sample_cell",
    "sample_genotype",
    "save_genotype",
    "search_space_size",
    "unrank_cell",
    "unrank_genotype",
]
