"""The search: the supernet and its batched cell, the one search step, and the loop over epochs."""

from mdarts_rs.search.loop import (
    STEP_STATS,
    RanksDisagree,
    SearchDiverged,
    Searcher,
    SearchInterrupted,
    SearchResult,
    batch_statistics,
    cross_entropy,
    data_fingerprint,
    entropy_loss,
    first_names,
    gap_accuracy,
    non_finite_state,
)

__all__ = [
    "STEP_STATS",
    "RanksDisagree",
    "SearchDiverged",
    "SearchInterrupted",
    "SearchResult",
    "Searcher",
    "batch_statistics",
    "cross_entropy",
    "data_fingerprint",
    "entropy_loss",
    "first_names",
    "gap_accuracy",
    "non_finite_state",
]
