"""The search supernet: DARTS' search network (Liu et al. 2019) with the α layouts of multi-level DARTS
(Li, Chen, Sun 2021): one α table per level and cell type, or DARTS' two shared tables.

Structurally identical to DARTS' search model so that results compare: a 3C-channel stem, reduction cells
at layers//3 and 2·layers//3 with doubled channels, ReLU-conv-BN or factorized-reduce preprocessing, mixed
ops over the 8 primitives (pooling followed by a non-affine BN), non-affine BN throughout, global pooling
and a linear classifier.

Partial channel connections (PC-DARTS, Xu et al. 2020), ``partial_channels`` K > 1: every edge's mixed op
sees the first 1/K of its input's channels, the others bypass it (max-pooled 2×2 on a reduction's stride-2
edges), and the edge's output, the two parts concatenated, is channel-shuffled in K groups. With them comes
edge normalisation: a β per edge, whose softmax over the edges into each node weighs their outputs; β is
learned with α, and derivation ranks edges by β's weight times their op weights. The shuffle is one fixed
permutation for every edge, so a node computes it once on the sum of its edges (the same numbers).
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
from mdarts_rs.primitives import OPS, PartialChannels, make_stem, search_preprocessing
from mdarts_rs.search.fastcell import FastSearchCell

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
    earlier node (14 edges), and the concatenation of the intermediates. With ``partial`` K > 1 the mixed
    ops see 1/K of the channels (PC-DARTS; see the module's text)."""

    def __init__(self, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool, partial: int = 1):
        super().__init__()
        assert c % partial == 0, f"{c} channels do not split into {partial} parts"
        self.reduction, self.partial = reduction, partial
        self.preprocess0, self.preprocess1 = search_preprocessing(c_prev_prev, c_prev, c, reduction_prev)
        #: rows[node][j]: the edge (and row of α) from state j into intermediate node ``node``
        self.rows = [[edge_index(node, j) for j in range(2 + node)] for node in range(STEPS)]
        self.edges = nn.ModuleList(
            MixedOp(c // partial, 2 if reduction and j < 2 else 1) for row in self.rows for j in range(len(row))
        )
        assert [e for row in self.rows for e in row] == list(range(NUM_EDGES)), "edges are built in row order"

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        p: torch.Tensor,
        sparse: bool = False,
        edge_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``p``: (14, 8) op weights of this cell's table; ``edge_weights``: (14,) weights of the edges (edge
        normalisation), or None."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        if self.partial == 1 and edge_weights is None:
            for row in self.rows:
                s = sum(self.edges[e](h, p[e], sparse) for e, h in zip(row, states))
                states.append(s)  # type: ignore[arg-type]
            return torch.cat(states[2:], dim=1)
        if edge_weights is not None:
            p = p * edge_weights[:, None]
        part = PartialChannels(self.partial, self.reduction, edge_weights)
        inputs = [part.ops_input(h) for h in states]  # what the mixed ops see of each state, sliced once
        for row in self.rows:
            mixed = sum(self.edges[e](x, p[e], sparse) for e, x in zip(row, inputs))
            states.append(part.node(mixed, states, row))  # type: ignore[arg-type]
            inputs.append(part.ops_input(states[-1]))
        return torch.cat(states[2:], dim=1)


def node_edge_softmax(beta: torch.Tensor) -> torch.Tensor:
    """Edge normalisation (PC-DARTS): the softmax of β over the edges into each intermediate node, (14,)."""
    rows = [[edge_index(node, j) for j in range(2 + node)] for node in range(STEPS)]
    return torch.cat([torch.softmax(beta[row[0] : row[-1] + 1], dim=0) for row in rows])


class AlphaTables(nn.Module):
    """The architecture parameters: one (14, 8) ``nn.Parameter`` per table, named ``alpha_<table>``; with edge
    normalisation also one (14,) ``beta_<table>`` per table."""

    def __init__(self, tables: list[str], init: dict[str, torch.Tensor], betas: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.names = list(tables)
        self.edge_normalisation = betas is not None
        for name in self.names:
            self.register_parameter(f"alpha_{name}", nn.Parameter(init[name].clone()))
        for name in self.names if betas is not None else []:
            self.register_parameter(f"beta_{name}", nn.Parameter(betas[name].clone()))

    def table(self, name: str) -> nn.Parameter:
        return getattr(self, f"alpha_{name}")

    def beta(self, name: str) -> nn.Parameter:
        return getattr(self, f"beta_{name}")

    def softmax_entropy(self) -> tuple[Weights, Weights]:
        """Softmax weights p and per-edge entropies h of every table (Li, Chen, Sun 2021, eq. 6)."""
        p: Weights = {}
        h: Weights = {}
        for name in self.names:
            p[name], h[name] = ops.softmax_entropy(self.table(name))
        return p, h

    def edge_weights(self) -> Weights | None:
        """Each table's edge weights (per-node softmax of β), or None without edge normalisation."""
        if not self.edge_normalisation:
            return None
        return {name: node_edge_softmax(self.beta(name)) for name in self.names}


def initial_alphas(alpha_mode: str, seed: int) -> dict[str, torch.Tensor]:
    """α at initialisation: 1e-3·N(0, 1) from ``seed``. Both layouts start from the same values: DARTS'
    normal and reduction tables are drawn first, and every multi-level normal (reduction) table starts
    as DARTS' normal (reduction) table, so both supernets compute the same function at step 0."""
    return _initial(alpha_mode, seed)[0]


def initial_betas(alpha_mode: str, seed: int) -> dict[str, torch.Tensor]:
    """β at initialisation (edge normalisation): 1e-3·N(0, 1), drawn from ``seed`` after α's tables, the same
    way for both layouts."""
    return _initial(alpha_mode, seed)[1]


def _initial(alpha_mode: str, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    normal = 1e-3 * torch.randn(NUM_EDGES, len(PRIMITIVES), generator=g)
    reduce = 1e-3 * torch.randn(NUM_EDGES, len(PRIMITIVES), generator=g)
    beta_normal = 1e-3 * torch.randn(NUM_EDGES, generator=g)
    beta_reduce = 1e-3 * torch.randn(NUM_EDGES, generator=g)
    layout = AlphaLayout(alpha_mode, 5 if alpha_mode == "multilevel" else 3)
    alphas = {t: (reduce if t.startswith("reduce") else normal) for t in layout.tables}
    betas = {t: (beta_reduce if t.startswith("reduce") else beta_normal) for t in layout.tables}
    return alphas, betas


class SuperNet(nn.Module):
    """DARTS' search network with the α tables of ``alpha_mode`` ('multilevel' or 'shared').

    ``seed`` seeds both the network weights and α (the same for either mode). ``fast`` batches the edges
    that read each node (``fastcell.FastSearchCell``): the same function and the same initial weights,
    with far fewer kernels. ``partial_channels`` K > 1: PC-DARTS' partial channel connections with edge
    normalisation (see the module's text); K = 1 is DARTS' supernet. ``in_channels`` and ``image_size``
    describe the inputs (CIFAR's 3 and 32 by default); inputs larger than 32 pixels go through stride-2 stem
    convolutions (``primitives.make_stem``).
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
        partial_channels: int = 1,
        in_channels: int = 3,
        image_size: int = 32,
    ):
        super().__init__()
        assert steps == STEPS and multiplier == STEPS, "the search space has 4 intermediate nodes, all concatenated"
        if partial_channels < 1 or C % partial_channels:
            raise ValueError(f"partial_channels = {partial_channels} must be positive and divide C = {C}")
        self.layout = AlphaLayout(alpha_mode, layers)
        self.alpha_mode = alpha_mode
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.partial_channels = partial_channels
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
                self.cells.append(SearchCell(c_pp, c_p, c_curr, reduction, reduction_prev, partial_channels))
                reduction_prev = reduction
                c_pp, c_p = c_p, multiplier * c_curr
            self.global_pooling = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(c_p, num_classes)
        self.fast = fast
        if fast:
            self.cells = nn.ModuleList(FastSearchCell.from_plain(c) for c in self.cells)
        betas = initial_betas(alpha_mode, seed) if partial_channels > 1 else None
        self.alphas = AlphaTables(self.layout.tables, initial_alphas(alpha_mode, seed), betas)

    def arch_parameters(self) -> list[nn.Parameter]:
        """The α tables, in layout order, then (edge normalisation) the β tables in layout order."""
        betas = [self.alphas.beta(t) for t in self.layout.tables] if self.alphas.edge_normalisation else []
        return [self.alphas.table(t) for t in self.layout.tables] + betas

    def arch_parameter_names(self) -> list[str]:
        """Names of ``arch_parameters()``, for messages: 'α table normal_low', 'β table normal_low', ..."""
        betas = [f"β table '{t}'" for t in self.layout.tables] if self.alphas.edge_normalisation else []
        return [f"α table '{t}'" for t in self.layout.tables] + betas

    def softmax_entropy(self) -> tuple[Weights, Weights]:
        """Softmax weights p and per-edge entropies h of every α table."""
        return self.alphas.softmax_entropy()

    def edge_weights(self) -> Weights | None:
        """Edge normalisation's (14,) edge weights of every table, or None (partial_channels = 1)."""
        return self.alphas.edge_weights()

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter but α (and β)."""
        return [p for n, p in self.named_parameters() if not n.startswith("alphas.")]

    def forward(
        self,
        x: torch.Tensor,
        weights: Weights | None = None,
        sparse: bool = False,
        edge_weights: Weights | None = None,
    ) -> torch.Tensor:
        """Logits of ``x``. ``weights`` maps each table to its (14, 8) op weights; by default softmax(α).
        ``edge_weights`` maps each table to its (14,) edge weights; by default edge normalisation's, if any."""
        if weights is None:
            weights, _ = self.softmax_entropy()
        if edge_weights is None:
            edge_weights = self.edge_weights()
        s0 = s1 = self.stem(x)
        for cell, table in zip(self.cells, self.layout.cell_tables):
            e = None if edge_weights is None else edge_weights[table]
            s0, s1 = s1, cell(s0, s1, weights[table], sparse, e)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def genotype(
        self, p: Weights | None = None, edge_weights: Weights | None = None, max_skip: int | None = None
    ) -> Genotype | MultiLevelGenotype:
        """The genotype derived (DARTS' rule, in Rust) from the softmax weights ``p``, by default this α's; with
        edge normalisation each edge's row is weighted by its edge weight first (PC-DARTS); ``max_skip`` caps
        the skip_connect edges of the normal cells (P-DARTS)."""
        with torch.no_grad():
            if p is None:
                p, _ = self.softmax_entropy()
            if edge_weights is None:
                edge_weights = self.edge_weights()
            if edge_weights is not None:
                p = {k: v * edge_weights[k][:, None] for k, v in p.items()}
        return derive_genotype({k: v.detach().double().cpu().numpy() for k, v in p.items()}, max_skip=max_skip)


def one_hot_weights(genotype: Genotype | MultiLevelGenotype, device: torch.device | str = "cpu") -> Weights:
    """Op weights that make the supernet compute the derived network: 1 on each kept edge's op, 0
    everywhere else (unkept edges contribute nothing)."""
    out: Weights = {}
    for table, cell in genotype.cells.items():
        out[table] = _cell_one_hot(cell).to(device)
    return out


def kept_edges(genotype: Genotype | MultiLevelGenotype, device: torch.device | str = "cpu") -> Weights:
    """Edge weights of the derived network for a supernet with edge normalisation: 1 on each kept edge, 0
    elsewhere (an unkept edge's bypassed channels then contribute nothing either)."""
    return {table: (w.sum(1) > 0).to(w.dtype) for table, w in one_hot_weights(genotype, device).items()}


def _cell_one_hot(cell: CellGenotype) -> torch.Tensor:
    w = torch.zeros(NUM_EDGES, len(PRIMITIVES))
    for i, (op, j) in enumerate(cell.edges):  # two kept edges per node, in node order
        w[edge_index(i // 2, j), PRIMITIVES.index(op)] = 1.0
    return w
