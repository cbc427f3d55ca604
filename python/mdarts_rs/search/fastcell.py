"""A search cell that computes the same function as ``supernet.SearchCell`` with far fewer, larger kernels.

Every edge that reads the same node is batched: the ReLU in front of the convolutions runs once per node,
each convolution type runs once over all those edges as one depthwise convolution over the edges' copies
of the node and one batched matrix product for their 1×1 convolutions, and each batch norm runs once over
the concatenated channels. Pooling followed by a non-affine batch norm gives the same output on every edge
that reads a node (same input, no parameters), so it runs once per node.

The mixed sum of an edge is Σ_k p_k·o_k over the 7 ops that are not 'none' (whose term is zero; DARTS
eq. 1), evaluated for all edges of a node at once: an op with an output per edge (the convolutions, and a
reduction's factorized skip) ends in a non-affine batch norm, so its weight p_k becomes that batch norm's
scale, p_k·BN(x) = BN(x; γ = p_k, β = 0), and costs no multiply forward or backward (the batch-norm
backward yields ∂/∂γ with the input gradient); the outputs shared by every edge are added with their
edges' weights by ``AddShared``, whose backward is batched matrix products that read the gradient once
per output.

The cell's two inputs have the same shape, so the 8 edges that read them run as one node op over both
inputs stacked along channels: every op is per channel or per edge (grouped convolutions where an edge's
input group matters), so this is the two node ops side by side in one set of kernels. A cell counts all
its batch norms' training batches in one foreach op.

``FastSearchCell.from_plain`` copies a plain cell's weights and statistics, so both compute the same
numbers up to summation order. The design and its measurements: ``docs/design.md``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from mdarts_rs._core import PRIMITIVES, STEPS, edge_index
from mdarts_rs.primitives import FactorizedReduce, PartialChannels, search_preprocessing

OP = {name: k for k, name in enumerate(PRIMITIVES)}


def readers(j: int) -> list[int]:
    """The intermediate nodes (0-based) that read state ``j`` (0, 1: cell inputs; 2..: nodes)."""
    return list(range(max(0, j - 1), STEPS))


class BatchNorm(nn.BatchNorm2d):
    """Non-affine batch norm that passes a constant unit scale and zero shift (buffers outside the state
    dict, x·1 + 0 is exact) so that torch may run cuDNN's batch-norm kernels on CUDA.

    ``forward(x, scale)`` multiplies the normalised output by a per-channel ``scale`` inside the batch norm
    (as its affine weight, with zero shift): the batched cell folds each op's mixing weight into the op's
    last batch norm this way, and the batch-norm backward yields the weight's gradient with the input's.

    ``counted_by_cell``: a ``FastSearchCell`` counts this batch norm's training batches
    (``num_batches_tracked``) together with its other batch norms', one kernel for all, instead of one
    kernel per batch norm; with momentum None the batch norm still counts itself, since the count sets the
    weight of the batch's statistics."""

    def __init__(self, channels: int):
        super().__init__(channels, affine=False)
        self.counted_by_cell = False
        self.register_buffer("unit", torch.ones(channels), persistent=False)
        self.register_buffer("zero", torch.zeros(channels), persistent=False)

    def counts_itself(self) -> bool:
        return not self.counted_by_cell or self.momentum is None

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and self.counts_itself():
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
        factor = _statistics_weight(self) if self.training else 0.0  # not read in eval mode
        weight = self.unit if scale is None else scale
        return F.batch_norm(x, self.running_mean, self.running_var, weight, self.zero, self.training, factor, self.eps)


def _statistics_weight(bn: nn.BatchNorm2d) -> float:
    """The weight of a training batch's statistics in ``bn``'s running ones once the batch is counted, as
    nn.BatchNorm2d takes it: its momentum, or with momentum None a cumulative average over the batches."""
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum  # type: ignore[arg-type]


class GroupedConvBranch(nn.Module):
    """``blocks`` × (ReLU, depthwise k×k, pointwise, BN) for ``n`` edges at once, on an input that holds the
    n edges' copies along channels (n·C). A separable convolution is 2 blocks (the second with stride 1
    and no dilation), a dilated convolution 1 block. The n per-edge 1×1 convolutions run as one batched
    matrix product."""

    def __init__(self, c: int, n: int, kernel: int, stride: int, padding: int, dilation: int, blocks: int):
        super().__init__()
        self.c, self.n, self.kernel = c, n, kernel
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.dw = nn.ParameterList()
        self.pw = nn.ParameterList()
        self.bn = nn.ModuleList()
        for _ in range(blocks):
            dw, pw = torch.empty(n * c, 1, kernel, kernel), torch.empty(n * c, c, 1, 1)
            for t in (dw, pw):  # nn.Conv2d's default initialisation, per edge
                nn.init.kaiming_uniform_(t, a=math.sqrt(5))
            self.dw.append(nn.Parameter(dw))
            self.pw.append(nn.Parameter(pw))
            self.bn.append(BatchNorm(n * c))

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: the ReLU'd node's copy per edge (B, n·C, H, W). Returns the n edges' outputs, (B, n·C, H', W'),
        each channel multiplied by ``scale`` (n·C) if given."""
        nc = self.n * self.c
        for b, (dw, pw, bn) in enumerate(zip(self.dw, self.pw, self.bn)):
            stride, padding, dilation = (
                (self.stride, self.padding, self.dilation) if b == 0 else (1, self.kernel // 2, 1)
            )
            x = F.conv2d(x, dw, stride=stride, padding=padding, dilation=dilation, groups=x.shape[1])
            bsz, _, h, w = x.shape  # [b, e] = pw[e] @ x[b, e] over the (C, H·W) slices
            x = torch.matmul(pw.view(self.n, self.c, self.c), x.reshape(bsz, self.n, self.c, h * w))
            x = x.view(bsz, nc, h, w)
            if b == len(self.bn) - 1:
                x = bn(x, scale)
            else:  # the next block starts with a ReLU
                x = F.relu(bn(x))
        return x

    @torch.no_grad()
    def load_from(self, branches: list[nn.Sequential]) -> None:
        """Copy the weights of ``n`` plain SepConv/DilConv modules (ReLU, dw, pw, BN, [ReLU, dw, pw, BN])."""
        for b in range(len(self.dw)):
            base = 4 * b
            self.dw[b].copy_(torch.cat([m[base + 1].weight for m in branches]))  # e·C+c order
            self.pw[b].copy_(torch.cat([m[base + 2].weight for m in branches]))
            _copy_bn(self.bn[b], [m[base + 3] for m in branches])


class GroupedFactorizedReduce(nn.Module):
    """``n`` FactorizedReduce skip connections on the same input: two stride-2 1×1 convolutions to n·C/2
    channels each, one BN over n·C channels ordered as the per-edge BNs are. With ``groups`` > 1 the input
    holds that many nodes (groups·C channels), each read by n/groups consecutive edges (grouped convolutions)."""

    def __init__(self, c: int, n: int, groups: int = 1):
        super().__init__()
        assert c % 2 == 0, f"FactorizedReduce needs an even width, got {c}"
        self.c, self.n = c, n
        self.conv_1 = nn.Conv2d(groups * c, n * c // 2, 1, stride=2, bias=False, groups=groups)
        self.conv_2 = nn.Conv2d(groups * c, n * c // 2, 1, stride=2, bias=False, groups=groups)
        self.bn = BatchNorm(n * c)

    def forward(self, relu_h: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        a = self.conv_1(relu_h)
        b = self.conv_2(relu_h[:, :, 1:, 1:])
        bsz, _, h, w = a.shape
        half = self.c // 2
        # (B, n, C/2, H, W) twice -> (B, n, C, H, W): each edge's channels are [conv_1 half, conv_2 half]
        out = torch.cat([a.view(bsz, self.n, half, h, w), b.view(bsz, self.n, half, h, w)], dim=2)
        out = out.view(bsz, self.n * self.c, h, w)
        return self.bn(out, scale)

    @torch.no_grad()
    def load_from(self, mods: list[FactorizedReduce]) -> None:
        self.conv_1.weight.copy_(torch.cat([m.conv_1.weight for m in mods]))
        self.conv_2.weight.copy_(torch.cat([m.conv_2.weight for m in mods]))
        _copy_bn(self.bn, [m.bn for m in mods])


def _adopt_batch_norms(module: nn.Module) -> None:
    """Replace the non-affine ``nn.BatchNorm2d`` modules inside ``module`` by ``BatchNorm`` ones (same state
    dict, same function), which a cell can count together."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d and not child.affine:
            bn = BatchNorm(child.num_features)
            bn.eps, bn.momentum = child.eps, child.momentum
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            _adopt_batch_norms(child)


def _copy_bn(dst: nn.BatchNorm2d, srcs: list[nn.BatchNorm2d]) -> None:
    assert dst.running_mean is not None and dst.running_var is not None and dst.num_batches_tracked is not None
    dst.running_mean.copy_(torch.cat([s.running_mean for s in srcs]))  # type: ignore[misc]
    dst.running_var.copy_(torch.cat([s.running_var for s in srcs]))  # type: ignore[misc]
    dst.num_batches_tracked.copy_(srcs[0].num_batches_tracked)  # type: ignore[arg-type]


class AddShared(torch.autograd.Function):
    """``AddShared.apply(mixed, w, *shared)``: ``mixed[:, e] + Σ_k w[e, k]·shared[k]`` for every edge e, with
    ``mixed`` (B, n, C, H, W), ``w`` (n, K) and K outputs (B, C, H, W) shared by the n edges; or, shared
    outputs (B, G·C, H, W) of G groups (nodes batched together), group g shared by edges g·n/G .. (g+1)·n/G − 1.

    The gradients are batched matrix products that read the output's gradient once each: ∂/∂shared[k] =
    Σ_e w[e, k]·grad[:, e] and ∂/∂w[e, k] = ⟨grad[:, e], shared[k]⟩, where autograd's multiply-and-sum
    formulas write and read an n-edge product for each."""

    @staticmethod
    def forward(ctx, mixed: torch.Tensor, w: torch.Tensor, *shared: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        assert len(shared) > 0, "AddShared needs at least one shared output"
        bsz, n, c = mixed.shape[:3]
        groups = shared[0].shape[1] // c
        assert all(t.shape[1] == groups * c for t in shared) and n % groups == 0, (
            "shared outputs must be groups of C channels"
        )
        spatial = mixed.shape[3:]
        out = mixed.view(bsz, groups, n // groups, c, *spatial)
        for k, s in enumerate(shared):  # the first addcmul writes a new tensor, the others add to it in place
            col = w[:, k].reshape(1, groups, n // groups, 1, 1, 1)
            term = s.view(bsz, groups, 1, c, *spatial)
            out = torch.addcmul(out, col, term) if k == 0 else out.addcmul_(col, term)
        ctx.groups = groups
        ctx.save_for_backward(w, *(shared if ctx.needs_input_grad[1] else ()))
        return out.view(mixed.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        w, *saved = ctx.saved_tensors
        bsz, n = grad.shape[:2]
        groups = ctx.groups
        m = n // groups
        g = grad.reshape(bsz * groups, m, -1)  # a view unless the gradient is channels-last
        shared_shape = (bsz, groups * grad.shape[2], *grad.shape[3:])
        grads_shared = []
        for k in range(w.shape[1]):
            if not ctx.needs_input_grad[2 + k]:
                grads_shared.append(None)
                continue
            # (B·G, 1, m): group g's weights in row b·G + g; a stride-0 view for G = 1, a small copy otherwise
            row = w[:, k].to(g.dtype).reshape(1, groups, 1, m).expand(bsz, groups, 1, m).reshape(bsz * groups, 1, m)
            grads_shared.append(torch.bmm(row, g).view(shared_shape))
        grad_w = None
        if ctx.needs_input_grad[1]:
            # under autocast the shared outputs may be bfloat16 and the sums float32 (w is); autograd casts
            # each gradient back to its input's type
            products = [torch.bmm(g, s.to(g.dtype).reshape(bsz * groups, -1, 1)) for s in saved]  # (B·G, m, 1) each
            grad_w = torch.cat(products, dim=2).view(bsz, n, -1).sum(0)
        return grad, grad_w, *grads_shared


class NodeOps(nn.Module):
    """Every candidate op of the ``n`` edges that read one state, batched; with ``groups`` > 1, of the edges
    that read ``groups`` states of the same shape, stacked along channels (groups·C), each read by n/groups
    consecutive edges (the cell's two inputs: one op for their 8 edges)."""

    #: The ops whose outputs are per edge, in PRIMITIVES order (consecutive columns of p); each one's op
    #: weight is folded into its last batch norm as a per-channel scale.
    PER_EDGE = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")

    def __init__(self, c: int, n: int, stride: int, groups: int = 1):
        super().__init__()
        assert n % groups == 0, f"{n} edges do not split into {groups} groups"
        self.c, self.n, self.stride, self.groups = c, n, stride, groups
        self.max_bn = BatchNorm(groups * c)
        self.avg_bn = BatchNorm(groups * c)
        self.skip = GroupedFactorizedReduce(c, n, groups) if stride == 2 else None
        self.sep_conv_3x3 = GroupedConvBranch(c, n, 3, stride, 1, 1, blocks=2)
        self.sep_conv_5x5 = GroupedConvBranch(c, n, 5, stride, 2, 1, blocks=2)
        self.dil_conv_3x3 = GroupedConvBranch(c, n, 3, stride, 2, 2, blocks=1)
        self.dil_conv_5x5 = GroupedConvBranch(c, n, 5, stride, 4, 2, blocks=1)

    def _per_edge_modules(self) -> dict[str, nn.Module]:
        """The per-edge ops' modules, in PRIMITIVES order (consecutive columns of p)."""
        mods: dict[str, nn.Module] = {"skip_connect": self.skip} if self.skip is not None else {}
        return mods | {name: getattr(self, name) for name in self.PER_EDGE}

    def forward(self, h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Mixed outputs of the n edges, (B, n, C, H', W'), of the state ``h`` (B, groups·C, H, W); ``p``: their
        (n, 8) op weights."""
        s, n, c, groups = self.stride, self.n, self.c, self.groups
        relu = F.relu(h)
        bsz, _, height, width = relu.shape
        # (B, n·C, H, W): each group's copy for each of its n/groups edges, for the grouped convolutions
        rep = relu.view(bsz, groups, 1, c, height, width).expand(bsz, groups, n // groups, c, height, width)
        rep = rep.reshape(bsz, n * c, height, width)
        per_edge = self._per_edge_modules()
        # p's columns: 'none', the shared outputs', the per-edge ops' (PRIMITIVES order); one split, whose
        # backward is one kernel where two slices' would be two each and an add
        _, shared_w, edge_w = p.split([1, len(PRIMITIVES) - 1 - len(per_edge), len(per_edge)], dim=1)
        # w·BN(x) = BN(x; γ = w, β = 0): each per-edge op's weight, repeated over its edge's C channels,
        # scales its last batch norm (no multiply of the output forward, nor of its gradient backward).
        cols = edge_w.t()  # (ops, n), in PRIMITIVES order
        dense = (
            cols.unsqueeze(-1).expand(len(per_edge), n, c).contiguous()
        )  # one copy (reshape would not copy for n = 1)
        scale = dict(zip(per_edge, dense.view(len(per_edge), n * c).unbind(0)))
        # Each op's output: per edge (B, n·C, H', W'), or shared by every edge (B, groups·C, H', W')
        outs = {name: per_edge[name](relu if name == "skip_connect" else rep, scale[name]) for name in per_edge}
        outs["max_pool_3x3"] = self.max_bn(F.max_pool2d(h, 3, s, 1))
        outs["avg_pool_3x3"] = self.avg_bn(F.avg_pool2d(h, 3, s, 1, count_include_pad=False))
        if self.skip is None:
            outs["skip_connect"] = h
        _, _, height, width = outs["max_pool_3x3"].shape
        # The weighted per-edge outputs summed, then the shared outputs times their edges' weights added
        mixed = functools.reduce(torch.add, (outs[name].view(bsz, n, c, height, width) for name in per_edge))
        shared = [name for name in PRIMITIVES[1:] if name not in per_edge]  # consecutive columns of p from 1
        assert shared_w.shape[1] == len(shared)
        return AddShared.apply(mixed, shared_w, *(outs[name] for name in shared))

    @torch.no_grad()
    def load_from(self, mixed_ops: list[nn.Module]) -> None:
        """Copy the weights of the plain MixedOps of these edges (in reader order)."""
        ops = [m.ops for m in mixed_ops]  # type: ignore[attr-defined]
        # Every edge's pooling BN has seen the same inputs, so their statistics agree; take each group's first.
        firsts = ops[:: self.n // self.groups]
        _copy_bn(self.max_bn, [o[OP["max_pool_3x3"]][1] for o in firsts])
        _copy_bn(self.avg_bn, [o[OP["avg_pool_3x3"]][1] for o in firsts])
        if self.skip is not None:
            self.skip.load_from([o[OP["skip_connect"]] for o in ops])
        for name in self.PER_EDGE:
            getattr(self, name).load_from([o[OP[name]] for o in ops])


class FastSearchCell(nn.Module):
    """A supernet cell with the edges that read each node batched (same function as ``SearchCell``, partial
    channels included)."""

    def __init__(self, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool, partial: int = 1):
        super().__init__()
        assert c % partial == 0, f"{c} channels do not split into {partial} parts"
        self.reduction, self.partial = reduction, partial
        self.preprocess0, self.preprocess1 = search_preprocessing(c_prev_prev, c_prev, c, reduction_prev)
        for pre in (self.preprocess0, self.preprocess1):
            _adopt_batch_norms(pre)
        # nodes[k] batches the edges that read states _states[k]: nodes[0] the cell's two inputs stacked along
        # channels, then each intermediate node but the last (read by none)
        self._states = [[0, 1], *([j] for j in range(2, STEPS + 1))]
        self.nodes = nn.ModuleList()
        self._edges: list[list[int]] = []
        for states in self._states:
            edges = [edge_index(i, j) for j in states for i in readers(j)]
            stride = 2 if reduction and states[0] < 2 else 1
            self.nodes.append(NodeOps(c // partial, len(edges), stride, groups=len(states)))
            self._edges.append(edges)
        #: rows[i]: the edges into intermediate node i, by input state
        self._rows = [[edge_index(i, j) for j in range(i + 2)] for i in range(STEPS)]
        # The rows of p grouped by the state their edges read (a permutation of the 14 edges), as a device
        # buffer: one gather per cell, then one split into the states' rows (a Python list index would copy
        # from the host at every step, which a CUDA graph cannot capture; split's backward is one kernel).
        self.register_buffer("edge_order", torch.tensor([e for edges in self._edges for e in edges]), persistent=False)
        self._sizes = [len(edges) for edges in self._edges]
        # Every batch norm of the cell runs once per forward: the cell counts their training batches with one
        # foreach kernel (a tuple, not a module attribute: no second registration)
        self._batch_norms = tuple(m for m in self.modules() if isinstance(m, BatchNorm))
        for bn in self._batch_norms:
            bn.counted_by_cell = True

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        p: torch.Tensor,
        sparse: bool = False,
        edge_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``p``: (14, 8) op weights of this cell's table; ``edge_weights``: (14,) edge weights (edge
        normalisation) or None. ``sparse`` is accepted for interface parity: the dense sum with zero weights
        is already exact."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        if edge_weights is not None:
            p = p * edge_weights[:, None]
        part = PartialChannels(self.partial, self.reduction, edge_weights)
        rows = p.index_select(0, self.edge_order).split(self._sizes)  # rows[k]: the edges that nodes[k] batches
        # The mixed outputs of each state's readers, one view per edge: unbind's backward stacks the edges'
        # gradients in one kernel, where indexing would zero-fill and accumulate a full copy per edge.
        both = self.nodes[0](torch.cat([part.ops_input(h) for h in states], dim=1), rows[0]).unbind(1)
        mixed = [both[: len(readers(0))], both[len(readers(0)) :]]
        for i in range(STEPS):
            terms = [mixed[j][i - readers(j)[0]] for j in range(i + 2)]
            node = functools.reduce(torch.add, terms)  # no 0 + first term, which would be a kernel of its own
            node = part.node(node, states, self._rows[i])
            states.append(node)  # type: ignore[arg-type]
            if i + 2 <= STEPS:
                mixed.append(self.nodes[i + 1](part.ops_input(node), rows[i + 1]).unbind(1))  # type: ignore[arg-type]
        counters = [bn.num_batches_tracked for bn in self._batch_norms if bn.training and not bn.counts_itself()]
        if counters:
            with torch.no_grad():
                torch._foreach_add_(counters, 1)  # type: ignore[arg-type]
        return torch.cat(states[2:], dim=1)

    @classmethod
    def from_plain(cls, cell: nn.Module) -> FastSearchCell:
        """A fast cell holding a plain ``SearchCell``'s weights and batch-norm statistics."""
        pre0, pre1 = cell.preprocess0, cell.preprocess1  # type: ignore[union-attr]
        c = pre1[1].out_channels  # type: ignore[index]
        if isinstance(pre0, FactorizedReduce):
            c_pp, reduction_prev = pre0.conv_1.in_channels, True
        else:
            c_pp, reduction_prev = pre0[1].in_channels, False  # type: ignore[index]
        fast = cls(c_pp, pre1[1].in_channels, c, cell.reduction, reduction_prev, cell.partial)  # type: ignore[index, arg-type]
        fast.preprocess0.load_state_dict(pre0.state_dict())  # type: ignore[union-attr]
        fast.preprocess1.load_state_dict(pre1.state_dict())  # type: ignore[union-attr]
        for j, node in enumerate(fast.nodes):
            node.load_from([cell.edges[e] for e in fast._edges[j]])  # type: ignore[index, union-attr]
        return fast
