"""The memory a network needs, estimated from its size before it is built (a search's supernet, a training's
network, a trained network loaded for use), and the refusal of one that the device cannot hold: an allocator
failure deep inside torch (or the kernel's out-of-memory killer) is worse than a message with the estimate."""

from __future__ import annotations

import math
import os
import resource
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from mdarts_rs._core import Genotype, MultiLevelGenotype
from mdarts_rs.geometry import stem_plan

#: Values a supernet cell keeps for the backward pass, per image and per value of the cell's output (channels ×
#: side²), by supernet: the tensors its forward pass saves, measured on the CPU (torch 2.15, 2026-12-06, C = 8 and
#: 16, 5 and 8 cells) at 289 for the batched supernet and 440-460 for the plain one, taken a little lower here so
#: that a run that fits is never refused (tests/test_memory.py measures them again).
SEARCH_ACTIVATIONS = {"batched": 280, "plain": 430}
#: The same for an evaluation network, by op: measured on networks whose cells are eight of one op (skip_connect
#: 20.5, avg_pool_3x3 16.5, max_pool_3x3 32.5, sep_conv 66.2, dil_conv 41.9). A network's estimate is the mean over
#: its cells' ops, times TRAIN_MARGIN (cells of mixed ops keep a little less than the mean: DARTS V2 44.0 against
#: its mean 39.9 × 1.1).
TRAIN_OP_ACTIVATIONS = {
    "none": 0.0,
    "skip_connect": 20.5,
    "avg_pool_3x3": 16.5,
    "max_pool_3x3": 32.5,
    "sep_conv_3x3": 66.2,
    "sep_conv_5x5": 66.4,
    "dil_conv_3x3": 41.9,
    "dil_conv_5x5": 42.0,
}
TRAIN_MARGIN = 0.85
#: Parameters per edge of a supernet cell of c channels: its four convolutions (DARTS' sep_conv_3x3/5x5,
#: dil_conv_3x3/5x5: 6c² + 102c); an evaluation cell counts its two 1×1 input convolutions only (a lower bound).
_EDGES = 14


class NetworkTooLarge(ValueError):
    """A network whose estimated memory exceeds what its device has free; the message holds the estimate."""


@dataclass
class Estimate:
    """What a network needs: ``params`` parameters, ``param_bytes`` for them with their gradients and optimizer
    state, ``activation_bytes`` for what one step keeps for its backward pass. ``what`` describes the network."""

    what: str
    params: int
    param_bytes: int
    activation_bytes: int
    kept: str = "with their gradients and optimizer state"
    advice: str = ""

    @property
    def total(self) -> int:
        return self.param_bytes + self.activation_bytes


def cell_shapes(C: int, layers: int, image_size: int) -> list[tuple[int, int]]:
    """(channels, side) of each cell: the channels double and the side halves at the reduction cells (layers//3
    and 2·layers//3), from the side the stem gives (``geometry.stem_plan``)."""
    _, side = stem_plan(image_size)
    out, c = [], C
    for i in range(layers):
        if i in (layers // 3, 2 * layers // 3):
            c, side = 2 * c, max(1, side // 2)
        out.append((c, side))
    return out


def _parameters(
    C: int, layers: int, image_size: int, classes: int, edge_channels: int | None, stem_channels: int | None = None
) -> int:
    """Parameters of a network of ``layers`` cells: every cell's input convolutions, and with ``edge_channels``
    (the supernet: C divided by PC-DARTS' K) its 14 edges' convolutions; the classifier. The stem gives
    ``stem_channels`` (CIFAR's 3C by default, ImageNet's C)."""
    c_pp = c_p = stem_channels or 3 * C
    total = 0
    for c, _ in cell_shapes(C, layers, image_size):
        total += (c_pp + c_p) * c
        if edge_channels is not None:
            e = c * edge_channels // C
            total += _EDGES * (6 * e * e + 102 * e)
        c_pp, c_p = c_p, 4 * c
    return total + c_p * classes


def _values(C: int, layers: int, image_size: int) -> int:
    """The values of all cells' outputs for one image (channels × side², summed over cells)."""
    return sum(c * side * side for c, side in cell_shapes(C, layers, image_size))


def search_estimate(
    C: int,
    layers: int,
    image_size: int,
    classes: int,
    images_per_step: int,
    partial_channels: int = 1,
    order: int = 1,
    bf16: bool = False,
    supernet: str = "batched",
) -> Estimate:
    """A search's ``supernet`` ("batched" or "plain"): its weights with their gradients and momentum (and the
    unrolled copy of order 2), and the activations of ``images_per_step`` images (a process's chunk of a batch)."""
    params = _parameters(C, layers, image_size, classes, C // partial_channels)
    per_image = SEARCH_ACTIVATIONS[supernet] * _values(C, layers, image_size) // partial_channels
    return Estimate(
        f"the supernet (C = {C}, {layers} cells, {images_per_step} images of {image_size}×{image_size} per step)",
        params,
        4 * params * (5 if order == 2 else 3),
        (2 if bf16 else 4) * per_image * images_per_step,
        advice="lower --init-channels, --layers or --batch-size, or raise --micro-batches",
    )


def train_activations(genotype: Genotype | MultiLevelGenotype) -> float:
    """Values an evaluation network of ``genotype`` keeps per image and per value of its cells' outputs (a lower
    bound: TRAIN_MARGIN times the mean of its ops' TRAIN_OP_ACTIVATIONS)."""
    counts: Counter[str] = Counter()
    for cell in genotype.cells.values():
        counts.update(cell.op_counts())
    total = sum(counts.values())
    return TRAIN_MARGIN * sum(TRAIN_OP_ACTIVATIONS[op] * n for op, n in counts.items()) / max(total, 1)


def train_estimate(
    C: int,
    layers: int,
    image_size: int,
    classes: int,
    images_per_step: int,
    genotype: Genotype | MultiLevelGenotype,
    bf16: bool = False,
) -> Estimate:
    """A training's evaluation network of ``genotype``: weights, gradients and momentum, and the activations of a
    step."""
    params = _parameters(C, layers, image_size, classes, None)
    per_image = train_activations(genotype) * _values(C, layers, image_size)
    return Estimate(
        f"the network (C = {C}, {layers} cells, {images_per_step} images of {image_size}×{image_size} per step)",
        params,
        4 * params * 3,
        int((2 if bf16 else 4) * per_image * images_per_step),
        advice="lower --init-channels, --layers or --batch-size",
    )


def check_loadable(
    C: int, layers: int, image_size: int, classes: int, weights: dict[str, torch.Tensor], source: str, imagenet: bool
) -> None:
    """Before a trained network is built to load its checkpoint's ``weights``: NetworkTooLarge where the network
    and the weights read do not fit in memory (inference keeps no activations to speak of), ValueError where the
    weights hold fewer values than the network the checkpoint's settings describe has parameters (a damaged file:
    building that network first could take all the memory)."""
    params = _parameters(C, layers, image_size, classes, None, C if imagenet else None)
    what = f"its network (C = {C}, {layers} cells)"
    check_fits(Estimate(what, params, 4 * params * 2, 0, "as weights read and built"), torch.device("cpu"), source)
    held = sum(t.numel() for t in weights.values())
    if held < params:
        raise ValueError(
            f"{source}: its settings describe {what} of at least {params:,} parameters, but its weights hold "
            f"{held:,} values: the file is damaged"
        )


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a network on ``device``: a GPU's free memory, or the RAM available to this process (the
    kernel's MemAvailable, within a container's cgroup limit and the process's ``ulimit -v``); None where it cannot
    be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    known = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                known.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            known.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]  # ulimit -v: this process's address space
    if limit != resource.RLIM_INFINITY:
        try:
            mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            known.append(limit - mapped)
        except (OSError, ValueError, IndexError):
            pass
    if not known:
        try:
            known.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return None
    return max(0, min(known))


def _size(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:,.1f} GiB"
    return f"{math.ceil(n / 2**20):,} MiB" if n >= 2**20 else f"{math.ceil(n / 2**10):,} KiB"


def check_fits(estimate: Estimate, device: torch.device, source: str = "") -> None:
    """NetworkTooLarge, with the estimate, where ``estimate`` exceeds the memory free on ``device`` (``source``
    names the file the network comes from, for messages)."""
    free = available_bytes(device)
    if free is None or estimate.total <= free:
        return
    acts = f"; activations {_size(estimate.activation_bytes)}" if estimate.activation_bytes else ""
    raise NetworkTooLarge(
        f"{source + ': ' if source else ''}{estimate.what} needs at least about {_size(estimate.total)} "
        f"({estimate.params / 1e6:,.1f} M parameters: {_size(estimate.param_bytes)} {estimate.kept}{acts}), more "
        f"than the {_size(free)} free on {device.type}" + (f": {estimate.advice}" if estimate.advice else "")
    )
