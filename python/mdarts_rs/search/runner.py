"""A search into a run folder: ``run_search`` follows the rules every run shares (``mdarts_rs.run``) and records
each epoch there; under torchrun rank 0 alone touches the folder."""

from __future__ import annotations

import contextlib
import dataclasses
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mdarts_rs import plots
from mdarts_rs._core import Genotype, MultiLevelGenotype
from mdarts_rs.config import SearchConfig
from mdarts_rs.data import Dataset, as_dataset
from mdarts_rs.distributed import broadcast_object
from mdarts_rs.distributed import world as _world
from mdarts_rs.run import RunFolder, open_run
from mdarts_rs.search.loop import Searcher, SearchResult
from mdarts_rs.tensorboard import Board


class SearchRecorder:
    """A search's checkpoints and epoch records in a run folder, and its TensorBoard event files (``board``)."""

    def __init__(self, run: RunFolder):
        self.run = run
        self.board: Board | None = None

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.run.save_checkpoint(state)

    def end_epoch(
        self, record: dict[str, Any], genotype: Genotype | MultiLevelGenotype, history: list[dict[str, Any]]
    ) -> None:
        self.run.write_genotype(genotype, record["epoch"])
        self.run.write_metrics(history)

    def log_step(self, step: int, values: dict[str, float]) -> None:
        if self.board is not None:
            self.board.scalars(step, values)

    def log_epoch(
        self,
        step: int,
        record: dict[str, Any],
        genotype: Genotype | MultiLevelGenotype,
        alpha: dict[str, np.ndarray],
        steps: int,
    ) -> None:
        if self.board is not None:
            self.board.search_epoch(step, record, genotype, alpha, steps)

    def describe(self) -> str:
        return self.run.checkpoint_note()


class OtherRankRecorder:
    """The recorder of a rank other than 0 in a search over several ranks: rank 0 writes the run folder."""

    def __init__(self, out: Path):
        self.out = out

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass

    def end_epoch(
        self, record: dict[str, Any], genotype: Genotype | MultiLevelGenotype, history: list[dict[str, Any]]
    ) -> None:
        pass

    def describe(self) -> str:
        return f"rank 0 keeps the last good checkpoint in {self.out}"


def _same_supernet(cfg: SearchConfig, state: dict[str, Any] | None) -> SearchConfig:
    """``cfg`` with the supernet a resumed run was started with (the two keep their weights in other layouts)."""
    if state is None:
        return cfg
    started = SearchConfig.from_json(state["config"]).supernet
    if started != cfg.supernet:
        if not cfg.quiet:
            tqdm.write(f"{cfg.out}: resuming with the {started} supernet the run was started with")
        cfg = dataclasses.replace(cfg, supernet=started)
    return cfg


def run_search(
    cfg: SearchConfig,
    images: Dataset | np.ndarray,
    labels: np.ndarray | None = None,
    world: tuple[int, int] | None = None,
) -> SearchResult:
    """Run (or with ``cfg.resume`` continue) a search whose files go to the run folder ``cfg.out``: its
    ``config.json``, a checkpoint and the derived genotype after every epoch, ``metrics.jsonl``, the final
    ``genotype.json`` and, with ``cfg.plots``, the plots. ``images`` is a ``Dataset`` or CIFAR-10's arrays (with
    ``labels``); ``config.json`` records its description (kind, path, classes, image size, channels, cache key)
    and the number of processes. A folder that holds another run's files is refused unless ``cfg.resume``
    continues that run or ``cfg.overwrite`` replaces it; one process writes a folder at a time.

    Under torchrun (``world``: (rank, world size), by default the process group's) the ranks run the search
    together: rank 0 alone touches the run folder, reads the checkpoint and sends it to the others (no shared
    filesystem needed); its refusals reach every rank."""
    data = as_dataset(images, labels, cfg.dataset)  # checked before the run folder is touched
    rank, size = world if world is not None else _world()
    run = RunFolder(cfg.out) if rank == 0 else None
    with ExitStack() as stack:
        prepared: tuple[str, Any] = ("ok", None)
        if run is not None:
            try:
                prepared = ("ok", stack.enter_context(open_run(run, cfg.resume, cfg.overwrite, "search")))
            except Exception as e:  # sent to the other ranks, which would otherwise wait for rank 0
                if size == 1:
                    raise
                prepared = ("error", e)
        if size > 1:
            prepared = broadcast_object(prepared)
        if prepared[0] == "error":
            raise prepared[1]
        state = prepared[1]
        cfg = _same_supernet(cfg, state)
        recorder = SearchRecorder(run) if run is not None else OtherRankRecorder(cfg.out)
        searcher = Searcher(cfg, data, None, recorder, world=(rank, size))
        if state is not None:
            searcher.load_state(state)
        if run is not None:
            run.write_json(
                "config.json", {**cfg.to_json(), "data_description": searcher.data.describe(), "world_size": size}
            )
            if cfg.tensorboard:  # what a stopped run logged after its checkpoint's step is dropped
                recorder.board = stack.enter_context(contextlib.closing(Board(run.path, searcher.global_step() + 1)))
        result = searcher.run_epochs()
        if run is not None:
            run.write_genotype(result.genotype)
            if cfg.plots:
                plots.plot_search_run(run.path, result.history, result.model, result.genotype)
    return result
