"""torch.distributed glue for torchrun (NCCL on GPUs, gloo on CPUs): the process group, and the explicit
collectives a search spread over ranks needs (its α step takes gradients with ``autograd.grad``, which
DistributedDataParallel would not average)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

#: What gloo and NCCL say when a peer process is gone (gloo: "Connection closed by peer [127.0.0.1]:4745").
_PEER_GONE = re.compile(r"Connection (closed|reset) by peer|Broken pipe|communicator was aborted|remote process exit")


class RankLost(RuntimeError):
    """A process of the torchrun job ended (killed, crashed) while this one waited for it in a collective."""


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``), 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device, timeout: timedelta | None = None) -> torch.device:
    """Join the torchrun process group when WORLD_SIZE > 1; returns this rank's device. ``timeout`` bounds the
    wait of a collective (torch's default where None)."""
    if launched_world_size() <= 1 or dist.is_initialized():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return device


def leave_distributed() -> None:
    """Leave the process group together (nothing outside torchrun): a barrier, then ``destroy_process_group``.
    A rank that exits while the group is alive, or while a peer is still in a collective with it, can abort
    in gloo's threads ("terminate called without an active exception"), which torchrun reports as a failed
    job."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device, world_size: int | None = None) -> list[float]:
    """The sums over ranks of ``values`` (float64), the values themselves in one process (``world_size`` 1: a run
    of its own in a process of a group)."""
    if (world()[1] if world_size is None else world_size) == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_tensors_(tensors: list[torch.Tensor]) -> None:
    """Sum ``tensors`` over ranks in place, with one collective per dtype (through a flat buffer)."""
    if world()[1] == 1 or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank (one small all-reduce); ``flag`` itself in one process."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    """Wait for every rank (nothing in one process)."""
    if world()[1] > 1:
        dist.barrier()


def ranks_disagree(values: torch.Tensor) -> bool:
    """Whether a float64 vector differs between ranks (its maximum and minimum over ranks, one all-reduce)."""
    if world()[1] == 1:
        return False
    both = torch.cat([values, -values])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    n = len(values)
    return not torch.equal(both[:n], -both[n:])


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; no shared filesystem needed); ``obj`` in one process."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank; ``[obj]`` in one process."""
    if world()[1] == 1:
        return [obj]
    out: list[Any] = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


@contextmanager
def rank_loss_said(kept: Callable[[], str], ranks: tuple[int, int] | None = None) -> Iterator[None]:
    """Where a collective fails because another process of the job has gone (kill -9, a crash), RankLost saying
    which rank was lost (where there are two, the other one), what is kept (``kept()``: where the last checkpoint
    is) and that ``--resume`` continues, in place of the backend's error. ``ranks`` (rank, world size) are those
    of the work inside (by default the process group's; (0, 1): a run of its own, which waits for no one)."""
    try:
        yield
    except RankLost:
        raise
    except RuntimeError as e:
        rank, size = ranks or world()
        text = str(e)
        if size <= 1 or not (isinstance(e, dist.DistError) or _PEER_GONE.search(text)):
            raise
        who = f"rank {1 - rank}" if size == 2 else "another rank"
        found = _PEER_GONE.search(text)
        why = found.group(0) if found else (text.strip().splitlines() or [type(e).__name__])[0][:120]
        raise RankLost(
            f"rank {rank} of {size}: lost {who} of this torchrun job, which ended while this process waited for it "
            f"({why}); {kept()}; continue with --resume"
        ) from None
