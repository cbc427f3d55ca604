"""The search supernet: DARTS' search network (Liu et al. 2019) with the α layouts of multi-level DARTS
(Li, Chen, Sun 2021): one α table per level and cell type, or DARTS' two shared tables.

Structurally identical to DARTS' search model so that results compare: a 3C-channel stem, reduction cells
at layers//3 and 2·layers//3 with doubled channels, ReLU-conv-BN or factorized-reduce preprocessing, mixed
ops over the 8 primitives (pooling followed by a non-affine BN), non-affine BN throughout, global pooling
and a linear classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from mdarts_rs import ops
from mdarts_rs._core import (
    NUM_EDGES,
    PRIMITIVES,
    STEPS,
    AlphaLayout,
    CellGenotype,
    Genotype,
    MultiLevelGenotype,
    derive_genotype,
    edge_index,
)
from mdarts_rs.fastcell import FastSearchCell
from mdarts_rs.primitives import OPS, make_stem, search_preprocessing

_NONE = PRIMITIVES.index("none")
assert _NONE == 0, "MixedOp skips 'none' as the first primitive"

Weights = dict[str, torch.Tensor]


class MixedOp(nn.Module):
    """Σ_k p_k·o_k(x) over the candidate ops of one edge (DARTS eq. 1).

    'none' outputs zeros, so its term is skipped: the sum and every gradient are unchanged.
    """

    def __init__(self, c: int, stride: int):
        super().__init__()
        self.ops = nn.ModuleList()
        for name in PRIMITIVES:
            op = OPS[name](c, stride, False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(c, affine=False))
            self.ops.append(op)
        self.stride = stride

    def forward(self, x: torch.Tensor, p: torch.Tensor, sparse: bool = False) -> torch.Tensor:
        """``p``: (8,) op weights of this edge. ``sparse`` skips every op whose weight is exactly 0 (for
        evaluating a derived network under ``torch.no_grad``; it reads ``p`` on the host)."""
        if sparse:
            active = [k for k, v in enumerate(p.tolist()) if v != 0.0 and k != _NONE]
            if not active:
                return self.ops[_NONE](x)
            return ops.weighted_sum([self.ops[k](x) for k in active], p[active])
        return ops.weighted_sum([op(x) for op in self.ops[1:]], p[1:])


class SearchCell(nn.Module):
    """A supernet cell: 2 preprocessed inputs, 4 intermediate nodes each summing a mixed op of every
    earlier node (14 edges), and the concatenation of the intermediates."""

    def __init__(self, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = search_preprocessing(c_prev_prev, c_prev, c, reduction_prev)
        #: rows[node][j]: the edge (and row of α) from state j into intermediate node ``node``
        self.rows = [[edge_index(node, j) for j in range(2 + node)] for node in range(STEPS)]
        self.edges = nn.ModuleList(
            MixedOp(c, 2 if reduction and j < 2 else 1) for row in self.rows for j in range(len(row))
        )
        assert [e for row in self.rows for e in row] == list(range(NUM_EDGES)), "edges are built in row order"

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, p: torch.Tensor, sparse: bool = False) -> torch.Tensor:
        """``p``: (14, 8) op weights of this cell's table."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for row in self.rows:
            s = sum(self.edges[e](h, p[e], sparse) for e, h in zip(row, states))
            states.append(s)  # type: ignore[arg-type]
        return torch.cat(states[2:], dim=1)


class AlphaTables(nn.Module):
    """The architecture parameters: one (14, 8) ``nn.Parameter`` per table, named ``alpha_<table>``."""

    def __init__(self, tables: list[str], init: dict[str, torch.Tensor]):
        super().__init__()
        self.names = list(tables)
        for name in self.names:
            self.register_parameter(f"alpha_{name}", nn.Parameter(init[name].clone()))

    def table(self, name: str) -> nn.Parameter:
        return getattr(self, f"alpha_{name}")

    def softmax_entropy(self) -> tuple[Weights, Weights]:
        """Softmax weights p and per-edge entropies h of every table (Li, Chen, Sun 2021, eq. 6)."""
        p: Weights = {}
        h: Weights = {}
        for name in self.names:
            p[name], h[name] = ops.softmax_entropy(self.table(name))
        return p, h


def initial_alphas(alpha_mode: str, seed: int) -> dict[str, torch.Tensor]:
    """α at initialisation: 1e-3·N(0, 1) from ``seed``. Both layouts start from the same values: DARTS'
    normal and reduction tables are drawn first, and every multi-level normal (reduction) table starts
    as DARTS' normal (reduction) table, so both supernets compute the same function at step 0."""
    g = torch.Generator().manual_seed(seed)
    normal = 1e-3 * torch.randn(NUM_EDGES, len(PRIMITIVES), generator=g)
    reduce = 1e-3 * torch.randn(NUM_EDGES, len(PRIMITIVES), generator=g)
    layout = AlphaLayout(alpha_mode, 5 if alpha_mode == "multilevel" else 3)
    return {t: (reduce if t.startswith("reduce") else normal) for t in layout.tables}


class SuperNet(nn.Module):
    """DARTS' search network with the α tables of ``alpha_mode`` ('multilevel' or 'shared').

    ``seed`` seeds both the network weights and α (the same for either mode). ``fast`` batches the edges
    that read each node (``fastcell.FastSearchCell``): the same function and the same initial weights,
    with far fewer kernels. ``in_channels`` and ``image_size`` describe the inputs (CIFAR's 3 and 32 by
    default); inputs larger than 32 pixels go through stride-2 stem convolutions (``primitives.make_stem``).
    """

    def __init__(
        self,
        C: int = 16,
        num_classes: int = 10,
        layers: int = 8,
        alpha_mode: str = "multilevel",
        steps: int = STEPS,
        multiplier: int = STEPS,
        stem_multiplier: int = 3,
        seed: int = 0,
        fast: bool = False,
        in_channels: int = 3,
        image_size: int = 32,
    ):
        super().__init__()
        assert steps == STEPS and multiplier == STEPS, "the search space has 4 intermediate nodes, all concatenated"
        self.layout = AlphaLayout(alpha_mode, layers)
        self.alpha_mode = alpha_mode
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.in_channels, self.image_size = in_channels, image_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            c_curr = stem_multiplier * C
            self.stem = make_stem(in_channels, c_curr, image_size)
            c_pp, c_p, c_curr = c_curr, c_curr, C
            self.cells = nn.ModuleList()
            reduction_prev = False
            for reduction in self.layout.reduction:
                if reduction:
                    c_curr *= 2
                self.cells.append(SearchCell(c_pp, c_p, c_curr, reduction, reduction_prev))
                reduction_prev = reduction
                c_pp, c_p = c_p, multiplier * c_curr
            self.global_pooling = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(c_p, num_classes)
        self.fast = fast
        if fast:
            self.cells = nn.ModuleList(FastSearchCell.from_plain(c) for c in self.cells)
        self.alphas = AlphaTables(self.layout.tables, initial_alphas(alpha_mode, seed))

    def arch_parameters(self) -> list[nn.Parameter]:
        """The α tables, in layout order."""
        return [self.alphas.table(t) for t in self.layout.tables]

    def softmax_entropy(self) -> tuple[Weights, Weights]:
        """Softmax weights p and per-edge entropies h of every α table."""
        return self.alphas.softmax_entropy()

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter but α."""
        return [p for n, p in self.named_parameters() if not n.startswith("alphas.")]

    def forward(self, x: torch.Tensor, weights: Weights | None = None, sparse: bool = False) -> torch.Tensor:
        """Logits of ``x``. ``weights`` maps each table to its (14, 8) op weights; by default softmax(α)."""
        if weights is None:
            weights, _ = self.softmax_entropy()
        s0 = s1 = self.stem(x)
        for cell, table in zip(self.cells, self.layout.cell_tables):
            s0, s1 = s1, cell(s0, s1, weights[table], sparse)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def genotype(self, p: Weights | None = None) -> Genotype | MultiLevelGenotype:
        """The genotype derived (DARTS' rule, in Rust) from the softmax weights ``p``, by default this α's."""
        if p is None:
            with torch.no_grad():
                p, _ = self.softmax_entropy()
        return derive_genotype({k: v.detach().double().cpu().numpy() for k, v in p.items()})


def one_hot_weights(genotype: Genotype | MultiLevelGenotype, device: torch.device | str = "cpu") -> Weights:
    """Op weights that make the supernet compute the derived network: 1 on each kept edge's op, 0
    everywhere else (unkept edges contribute nothing)."""
    out: Weights = {}
    for table, cell in genotype.cells.items():
        out[table] = _cell_one_hot(cell).to(device)
    return out


def _cell_one_hot(cell: CellGenotype) -> torch.Tensor:
    w = torch.zeros(NUM_EDGES, len(PRIMITIVES))
    for i, (op, j) in enumerate(cell.edges):  # two kept edges per node, in node order
        w[edge_index(i // 2, j), PRIMITIVES.index(op)] = 1.0
    return w
