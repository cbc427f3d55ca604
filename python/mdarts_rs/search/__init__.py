"""The search: the supernet and its batched cell (``supernet``, ``fastcell``), the one search step (``step``) and
its CUDA-graph replay (``graph``), the loop over epochs (``loop``) with its diagnostics (``diagnostics``), and a
search into a run folder (``runner``)."""

from mdarts_rs.search.diagnostics import gap_accuracy
from mdarts_rs.search.loop import RanksDisagree, SearchDiverged, Searcher, SearchInterrupted, SearchResult
from mdarts_rs.search.runner import run_search
from mdarts_rs.search.step import STEP_STATS, StepParts, batch_statistics, cross_entropy, entropy_loss, search_step

__all__ = [
    "STEP_STATS",
    "RanksDisagree",
    "SearchDiverged",
    "SearchInterrupted",
    "SearchResult",
    "Searcher",
    "StepParts",
    "batch_statistics",
    "cross_entropy",
    "entropy_loss",
    "gap_accuracy",
    "run_search",
    "search_step",
]
