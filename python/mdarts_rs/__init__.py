"""mdarts-rs: multi-level differentiable architecture search with heuristic entropy (Li, Chen, Sun 2021).

The search space, genotypes, derivation and enumeration live in the Rust core (``mdarts_rs._core``) and are
re-exported here; the supernet, search and evaluation are PyTorch modules built on top.
"""

import importlib

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
    edge_index,
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


def __getattr__(name: str):  # torch-backed parts load on first use, so `import mdarts_rs` stays light
    if name in ("SuperNet", "one_hot_weights"):
        return getattr(importlib.import_module("mdarts_rs.search.supernet"), name)
    if name == "count_params":
        return importlib.import_module("mdarts_rs.primitives").count_params
    if name in ("eval_network", "count_macs"):
        return getattr(importlib.import_module("mdarts_rs.evaluate.network"), name)
    if name == "load_trained":
        return importlib.import_module("mdarts_rs.evaluate.trained").load_trained
    if name == "run_search":
        return importlib.import_module("mdarts_rs.search").run_search
    if name in ("SearchConfig", "TrainConfig", "ProtocolConfig"):
        return getattr(importlib.import_module("mdarts_rs.config"), name)
    if name in ("run_protocol", "rebuild_report"):
        return getattr(importlib.import_module("mdarts_rs.protocol"), name)
    raise AttributeError(f"module 'mdarts_rs' has no attribute {name!r}")


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
    "ProtocolConfig",
    "SearchConfig",
    "SearchSpaceError",
    "SuperNet",
    "TrainConfig",
    "__version__",
    "count_macs",
    "count_params",
    "derive_cell",
    "derive_genotype",
    "derived_cell_count",
    "edge_index",
    "eval_network",
    "load_genotype",
    "load_trained",
    "parse_genotype",
    "rank_cell",
    "rank_genotype",
    "reduction_indices",
    "sample_cell",
    "sample_genotype",
    "one_hot_weights",
    "save_genotype",
    "rebuild_report",
    "run_protocol",
    "run_search",
    "search_space_size",
    "unrank_cell",
    "unrank_genotype",
]
