"""Run under torchrun by test_distributed.py: one search over the ranks, step by step in float64 and epoch by
epoch in float32, each rank saving what it holds (its α and weights) for the test to compare."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from mdarts_rs.config import SearchConfig  # noqa: E402
from mdarts_rs.search import RanksDisagree, Searcher  # noqa: E402

from tinycifar import tiny_cfg, tiny_images  # noqa: E402


def worker_cfg(out: Path, **kw: Any) -> SearchConfig:
    """The search both the ranks and the test's one process run: the tests' tiny search at batch 8 on the
    batched cell (the same search, twice as fast on the CPU), writing to ``out``."""
    return tiny_cfg(out.parent, **{"out": out, "batch_size": 8, "arch_lr": 0.01, "supernet": "batched", **kw})


def float64_steps(searcher: Searcher, steps: int = 3) -> None:
    """``steps`` search steps in float64 on the searcher's first batches."""
    searcher.model.double()  # parameters keep their identity, so the optimizers follow
    batches = list(zip(searcher.train_loader.batches(0), searcher.val_loader.batches(0)))[:steps]
    for (xt, yt), (xv, yv) in batches:
        searcher.train_step(xt.double(), yt, xv.double(), yv)


def held(searcher: Searcher) -> dict[str, list[torch.Tensor]]:
    """What a rank must agree on: α and the weights (not the batch-norm statistics, which are per rank)."""
    m = searcher.model
    return {
        "alphas": [a.detach().clone() for a in m.arch_parameters()],
        "weights": [w.detach().clone() for w in m.weight_parameters()],
    }


class EpochFiles:
    """A recorder that saves, per epoch, what this rank holds and the genotype it derived."""

    def __init__(self, out: Path, rank: int, searcher_ref: list[Searcher]):
        self.out, self.rank, self.ref = out, rank, searcher_ref

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass

    def end_epoch(self, record: dict[str, Any], genotype: Any, history: list[dict[str, Any]]) -> None:
        torch.save(
            {**held(self.ref[0]), "genotype": genotype.to_json(), "record": record},
            self.out / f"epoch{record['epoch']}_rank{self.rank}.pt",
        )

    def describe(self) -> str:
        return "test recorder"


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    images, labels = tiny_images()
    s = Searcher(worker_cfg(out / "run"), images, labels)
    float64_steps(s)
    torch.save(held(s), out / f"f64_rank{rank}.pt")
    ref: list[Searcher] = []
    s = Searcher(worker_cfg(out / "run"), images, labels, EpochFiles(out, rank, ref))
    ref.append(s)
    s.run_epochs()
    # A rank whose weights drifted: the epoch's checksum stops every rank with RanksDisagree.
    if rank == 1:
        with torch.no_grad():
            s.model.weight_parameters()[0].view(-1)[0] += 1e-6
    try:
        s._check_ranks_agree()
        caught = "none"
    except RanksDisagree as e:
        caught = str(e)
    (out / f"disagree_rank{rank}.txt").write_text(caught)
    dist.barrier()  # no rank leaves while the other is still in a collective
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
