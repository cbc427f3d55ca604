"""A search cell that computes the same function as ``supernet.SearchCell`` with far fewer, larger kernels.

Every edge that reads the same node is batched (the plan of the GPU fast path): the ReLU in front of the
convolutions runs once per node, each convolution type runs once over all those edges as one depthwise
convolution over the edges' copies of the node and one batched matrix product for their 1×1 convolutions
(``OPTIONS`` holds other ways), and each batch norm runs once over the concatenated channels. Pooling
followed by a non-affine batch norm gives the same output on every edge that reads a node (same input, no
parameters), so it runs once per node. The mixed
sum of an edge is Σ_k p_k·o_k over the 7 ops that are not 'none' (whose term is zero), evaluated for all
edges of a node at once: an op with an output per edge (the convolutions, and a reduction's factorized
skip) ends in a non-affine batch norm, so its weight p_k becomes that batch norm's scale, p_k·BN(x) =
BN(x; γ = p_k, β = 0), and costs no multiply forward or backward (the batch-norm backward yields ∂/∂γ
with the input gradient); the outputs shared by every edge are added with their edges' weights by
``AddShared``, whose backward is batched matrix products that read the gradient once per output.

The cell's two inputs have the same shape, so the 8 edges that read them run as one node op over both
inputs stacked along channels (``OPTIONS["inputs"] = "paired"``): every op is per channel or per edge
(grouped convolutions where an edge's input group matters), so this is the two node ops side by side in one
set of kernels. A cell counts all its batch norms' training batches in one foreach op.

``FastSearchCell.from_plain`` copies a plain cell's weights and statistics, so both compute the same
numbers up to summation order.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from mdarts_rs import ops
from mdarts_rs._core import PRIMITIVES, STEPS
from mdarts_rs.primitives import FactorizedReduce

OP = {name: k for k, name in enumerate(PRIMITIVES)}

#: How the batched cell computes some of its parts; each choice computes the same function. Read when a
#: cell is built. ``pointwise``: "grouped" (one grouped 1×1 convolution on the node repeated per edge),
#: "bmm" (the same layout, the n per-edge 1×1 convolutions as one batched matrix product) or "dense" (one
#: dense 1×1 convolution with a block-diagonal weight; the first depthwise convolution then reads the node
#: once with a channel multiplier instead of a repeated copy). ``batch_norm``: "native"
#: (torch's non-affine batch norm) or "cudnn" (constant unit scale and zero shift, which lets torch use
#: cuDNN's batch norm kernels on CUDA; x·1 + 0 is exact); with the torch mix, the batch norms that carry
#: mixing weights as their scale run as affine ones either way. ``mix``: "torch" (the per-edge ops' weights
#: folded into their last batch norms, then adds), "fused" (``mdarts_rs.ops.node_mix``: one kernel forward,
#: two passes backward, for all edges of a node) or "fused_bn" (``mdarts_rs.ops.bn_mix``: the per-edge ops'
#: last batch norms and the weighted sum of all outputs in one op, and each separable convolution's inner
#: batch norm and ReLU in another, in training mode; eval mode runs "torch"). ``depthwise``: "torch"
#: (``F.conv2d`` with groups) or "fused" (``mdarts_rs.ops.depthwise_conv``: each plane read once per pass,
#: one pass per gradient). ``inputs``: "paired" (the 8 edges that read the cell's two inputs as one node op over
#: both inputs stacked along channels: the inputs have the same shape, and the ops are per channel or per
#: edge, so this is the two node ops side by side in half the kernels) or "separate" (one node op per input;
#: the layout of checkpoints written before this option). ``streams``: "one" (every kernel on the caller's
#: stream) or "branches" (on a CUDA device, a node's separable and dilated convolutions run on three side
#: streams while its pooling and skip ops run on the caller's; autograd runs each op's backward on its
#: forward's stream, so the backward overlaps too; the same kernels on the same inputs; one stream under
#: torch.compile).
#: Defaults: the fastest float32 choices measured on a GPU whose first α gradient agrees with the previous
#: default's (the CUDA graph-vs-eager test has not yet run with "bmm"). Graph-replayed step at batch
#: 64, C = 16, 8 cells (``benches/gpu_report.py --sections variants``, one H200 run): dense/cudnn/torch (the
#: previous default) 109.7 ms; with dense 1×1, "fused" mix 106.0, "fused_bn" mix 99.1, fused depthwise 114.2
#: (slower than torch's kernels); bmm 98.2, bmm with "fused_bn" 87.6. "fused_bn" stays opt-in: on that GPU
#: a replayed step of it did not match the eager step (tests/test_search.py). Channels-last was slower with
#: every choice. "paired" inputs are the default without a GPU timing yet: the same arithmetic in 18% fewer
#: kernel-launching ops per step (``gpu_report.py --sections traffic``, counted on a CPU).
OPTIONS = {"pointwise": "bmm", "batch_norm": "cudnn", "mix": "torch", "depthwise": "torch", "inputs": "paired", "streams": "one"}
_CHOICES = {"pointwise": ("grouped", "bmm", "dense"), "batch_norm": ("native", "cudnn"), "mix": ("torch", "fused", "fused_bn"),
            "depthwise": ("torch", "fused"), "inputs": ("paired", "separate"), "streams": ("one", "branches")}


@contextmanager
def options(choices: dict[str, str]) -> Iterator[None]:
    """``OPTIONS`` updated with ``choices`` while cells are built, restored afterwards."""
    saved = dict(OPTIONS)
    OPTIONS.update(choices)
    try:
        yield
    finally:
        OPTIONS.update(saved)


def _option(key: str) -> str:
    """``OPTIONS[key]``, checked against its choices (a misspelt choice must not pick another one silently)."""
    value = OPTIONS.get(key)
    if value not in _CHOICES[key]:
        raise ValueError(f"mdarts_rs.fastcell.OPTIONS[{key!r}] must be one of {_CHOICES[key]}, got {value!r}")
    return value


def readers(j: int) -> list[int]:
    """The intermediate nodes (0-based) that read state ``j`` (0, 1: cell inputs; 2..: nodes)."""
    return list(range(max(0, j - 1), STEPS))


def edge_id(node: int, j: int) -> int:
    """Row of α for the edge from state ``j`` into intermediate node ``node``."""
    return sum(2 + n for n in range(node)) + j


class BatchNorm(nn.BatchNorm2d):
    """Non-affine batch norm; with ``OPTIONS["batch_norm"] == "cudnn"`` it passes a constant unit scale and
    zero shift (buffers outside the state dict) so that torch may run cuDNN's kernels.

    ``forward(x, scale)`` multiplies the normalised output by a per-channel ``scale`` inside the batch norm
    (as its affine weight, with zero shift): the batched cell folds each op's mixing weight into the op's
    last batch norm this way, and the batch-norm backward yields the weight's gradient with the input's.

    ``counted_by_cell``: a ``FastSearchCell`` counts this batch norm's training batches
    (``num_batches_tracked``) together with its other batch norms', one kernel for all, instead of one
    kernel per batch norm; with momentum None the batch norm still counts itself, since the count sets the
    weight of the batch's statistics."""

    def __init__(self, channels: int):
        super().__init__(channels, affine=False)
        self.constant_affine = _option("batch_norm") == "cudnn"
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
        if scale is not None:
            # Dense: torch's channels-last CPU kernels read the weight as a dense vector, whatever its strides
            # (a scale expanded from one edge's weight has stride 0).
            weight, bias = scale.contiguous(), self.zero
        elif self.constant_affine:
            weight, bias = self.unit, self.zero
        else:
            weight = bias = None
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, self.training, factor, self.eps)


def _statistics_weight(bn: nn.BatchNorm2d) -> float:
    """The weight of a training batch's statistics in ``bn``'s running ones once the batch is counted, as
    nn.BatchNorm2d takes it: its momentum, or with momentum None a cumulative average over the batches."""
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum  # type: ignore[arg-type]


def _bn(channels: int) -> BatchNorm:
    return BatchNorm(channels)


#: A pending update of batch norms' running statistics (mix "fused_bn"): the batch norms, their batch means
#: and biased variances (one row each), and the values per channel.
StatsUpdate = tuple[list[BatchNorm], torch.Tensor, torch.Tensor, int]


class BlockDiagonal(torch.autograd.Function):
    """``BlockDiagonal.apply(pw, eye, interleaved)``: the dense (n·C, n·C, 1, 1) weight of n per-edge 1×1
    convolutions ``pw`` (n·C, C, 1, 1), ``eye`` the n×n identity: output channel e·C+i reads edge e's
    channels only. Input channels are ordered e·C+c, or c·n+e if ``interleaved``. Off-diagonal blocks are
    exact zeros (w·0), so the convolution is unchanged. The backward copies the diagonal blocks of the
    gradient out in one kernel (a multiply's backward would multiply the whole gradient, then sum it)."""

    @staticmethod
    def forward(ctx, pw: torch.Tensor, eye: torch.Tensor, interleaved: bool) -> torch.Tensor:  # type: ignore[override]
        n, c = eye.shape[0], pw.shape[1]
        ctx.n, ctx.c, ctx.interleaved = n, c, interleaved
        w = pw.view(n, c, c)
        if interleaved:
            dense = w.view(n, c, c, 1) * eye.view(n, 1, 1, n)  # [e, i, c, f] = w[e, i, c]·δ(e, f)
        else:
            dense = w.view(n, c, 1, c) * eye.view(n, 1, n, 1)  # [e, i, f, c] = w[e, i, c]·δ(e, f)
        return dense.reshape(n * c, n * c, 1, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        n, c = ctx.n, ctx.c
        if ctx.interleaved:
            blocks = torch.diagonal(grad.reshape(n, c, c, n), 0, 0, 3)  # [i, c, e] = grad[e, i, c, e]
        else:
            blocks = torch.diagonal(grad.reshape(n, c, n, c), 0, 0, 2)  # [i, c, e] = grad[e, i, e, c]
        return blocks.permute(2, 0, 1).reshape(n * c, c, 1, 1), None, None


class GroupedConvBranch(nn.Module):
    """``blocks`` × (ReLU, depthwise k×k, pointwise, BN) for ``n`` edges at once, on an input that holds the
    n edges' copies along channels (n·C). A separable convolution is 2 blocks (the second with stride 1
    and no dilation), a dilated convolution 1 block."""

    def __init__(self, c: int, n: int, kernel: int, stride: int, padding: int, dilation: int, blocks: int,
                 groups: int = 1):
        super().__init__()
        self.c, self.n, self.kernel = c, n, kernel
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.dense = _option("pointwise") == "dense"
        self.bmm = _option("pointwise") == "bmm"
        self.fused_depthwise = _option("depthwise") == "fused"
        #: The first block reads the node itself (dense: with channel multiplier n; fused depthwise: edge-major
        #: copies), not a copy per edge. Nodes batched in groups (``groups`` > 1) always pass copies.
        self.reads_node = (self.dense or self.fused_depthwise) and groups == 1
        self.register_buffer("eye", torch.eye(n), persistent=False)
        self.register_buffer("ones", torch.ones(n, 1), persistent=False)  # bn_mix weights of a lone batch norm
        self.dw = nn.ParameterList()
        self.pw = nn.ParameterList()
        self.bn = nn.ModuleList()
        for _ in range(blocks):
            dw, pw = torch.empty(n * c, 1, kernel, kernel), torch.empty(n * c, c, 1, 1)
            for t in (dw, pw):  # nn.Conv2d's default initialisation, per edge
                nn.init.kaiming_uniform_(t, a=math.sqrt(5))
            self.dw.append(nn.Parameter(dw))
            self.pw.append(nn.Parameter(pw))
            self.bn.append(_bn(n * c))

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None, normalize: bool = True,
                stats: list[StatsUpdate] | None = None) -> torch.Tensor:
        """``x``: the ReLU'd node (B, C, H, W) if ``reads_node``, else its copy per edge (B, n·C, H, W). Returns
        the n edges' outputs, (B, n·C, H', W'), each channel multiplied by ``scale`` (n·C) if given; without
        ``normalize``, the input of the last batch norm (its caller normalises). Given ``stats`` (mix
        "fused_bn"), a batch norm in training mode followed by a ReLU inside the branch runs as one bn_mix op,
        whose statistics are appended to ``stats`` for the caller to update."""
        nc = self.n * self.c
        for b, (dw, pw, bn) in enumerate(zip(self.dw, self.pw, self.bn)):
            first = b == 0
            # Dense mode, first block: the depthwise weights are stored in c·n+e order, so that one
            # convolution with channel multiplier n reads the node once.
            stride, padding, dilation = (
                (self.stride, self.padding, self.dilation) if first else (1, self.kernel // 2, 1))
            if self.fused_depthwise:  # grouped layouts: the first block reads the node once (edge-major copies)
                x = ops.depthwise_conv(x, dw, stride, padding, dilation, edge_major=self.reads_node and not self.dense)
            else:
                x = F.conv2d(x, dw, stride=stride, padding=padding, dilation=dilation, groups=x.shape[1])
            if self.dense:
                x = F.conv2d(x, BlockDiagonal.apply(pw, self.eye, first and self.reads_node))
            elif self.bmm:  # [b, e] = pw[e] @ x[b, e] over the (C, H·W) slices
                bsz, _, h, w = x.shape
                x = torch.matmul(pw.view(self.n, self.c, self.c), x.reshape(bsz, self.n, self.c, h * w))
                x = x.view(bsz, nc, h, w)
            else:
                x = F.conv2d(x, pw, groups=self.n)
            if b == len(self.bn) - 1:
                if normalize:
                    x = bn(x, scale)
            elif stats is not None and bn.training:  # batch norm and the next block's ReLU in one op
                x, mean, var = ops.bn_mix([x], [], self.ones, bn.eps, relu=True)
                stats.append(([bn], mean, var, x.shape[0] * x.shape[2] * x.shape[3]))
            else:  # the next block starts with a ReLU
                x = F.relu(bn(x))
        return x

    @torch.no_grad()
    def load_from(self, branches: list[nn.Sequential]) -> None:
        """Copy the weights of ``n`` plain SepConv/DilConv modules (ReLU, dw, pw, BN, [ReLU, dw, pw, BN])."""
        for b in range(len(self.dw)):
            base = 4 * b
            dw = torch.cat([m[base + 1].weight for m in branches])  # e·C+c order
            if self.dense and self.reads_node and b == 0:
                k = self.kernel
                dw = dw.view(self.n, self.c, 1, k, k).transpose(0, 1).reshape(self.n * self.c, 1, k, k)
            self.dw[b].copy_(dw)
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
        self.bn = _bn(n * c)

    def forward(self, relu_h: torch.Tensor, scale: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
        a = self.conv_1(relu_h)
        b = self.conv_2(relu_h[:, :, 1:, 1:])
        bsz, _, h, w = a.shape
        half = self.c // 2
        # (B, n, C/2, H, W) twice -> (B, n, C, H, W): each edge's channels are [conv_1 half, conv_2 half]
        out = torch.cat([a.view(bsz, self.n, half, h, w), b.view(bsz, self.n, half, h, w)], dim=2)
        out = out.view(bsz, self.n * self.c, h, w)
        return self.bn(out, scale) if normalize else out

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
        assert all(t.shape[1] == groups * c for t in shared) and n % groups == 0, "shared outputs must be groups of C channels"
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


@torch.no_grad()
def _update_running_stats(updates: list[StatsUpdate]) -> None:
    """Update the running statistics of batch norms as nn.BatchNorm2d does after a training batch whose
    per-channel means and biased variances are given (the rows of each update's tensors, one per batch
    norm). One foreach kernel per kind of statistic for all of them when their momenta agree."""
    bns = [bn for update in updates for bn in update[0]]
    counters = [bn.num_batches_tracked for bn in bns if bn.counts_itself()]  # the others: their cell counts them
    if counters:
        torch._foreach_add_(counters, 1)  # type: ignore[arg-type]
    means = [bn.running_mean for bn in bns]
    variances = [bn.running_var for bn in bns]
    dtype = means[0].dtype  # type: ignore[union-attr]
    new_means = [m for _, mean, _, _ in updates for m in mean.to(dtype).unbind(0)]
    # unbiased variances: each node's biased ones times count / (count - 1)
    new_variances = torch._foreach_mul([var.to(dtype) for _, _, var, _ in updates], [n / (n - 1) for *_, n in updates])
    new_variances = [v for var in new_variances for v in var.unbind(0)]
    momenta = {bn.momentum for bn in bns}
    if len(momenta) == 1 and None not in momenta:
        factor = momenta.pop()
        torch._foreach_lerp_(means, new_means, factor)  # type: ignore[arg-type]
        torch._foreach_lerp_(variances, new_variances, factor)  # type: ignore[arg-type]
        return
    for bn, m, v in zip(bns, new_means, new_variances):  # momentum None among them: one by one
        factor = _statistics_weight(bn)
        bn.running_mean.lerp_(m, factor)  # type: ignore[union-attr]
        bn.running_var.lerp_(v, factor)  # type: ignore[union-attr]


#: Side streams of the "branches" streams option, per CUDA device: created once, so that a captured CUDA graph
#: and later eager steps use the same ones.
_SIDE_STREAMS: dict[int, list[torch.cuda.Stream]] = {}


class _SideStreams:
    """Three side streams of a CUDA device for a node's convolutions: ``run(k, f, *args, **kwargs)`` queues ``f`` on
    side stream k after the work the caller's stream has queued before this object was made, ``join(*tensors)``
    makes the caller's stream wait for all three.

    The caching allocator reuses a freed tensor's memory on the stream that allocated it, so every tensor that
    crosses streams is recorded on the stream that uses it: the tensor arguments on the side stream, and on the
    caller's stream the results and the other ``tensors`` given to ``join`` (such as batch statistics ``f``
    appended to a list; recording a tensor on the stream that made it does nothing). Autograd runs each
    backward op on its forward op's stream and synchronises the streams where gradients cross."""

    def __init__(self, device: torch.device):
        self.main = torch.cuda.current_stream(device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in _SIDE_STREAMS:
            _SIDE_STREAMS[index] = [torch.cuda.Stream(device) for _ in range(3)]
        self.side = _SIDE_STREAMS[index]
        for stream in self.side:
            stream.wait_stream(self.main)
        self.produced: list[torch.Tensor] = []

    def run(self, lane: int, f: Callable[..., torch.Tensor], *args: object, **kwargs: object) -> torch.Tensor:
        stream = self.side[lane]
        for t in args:
            if isinstance(t, torch.Tensor):
                t.record_stream(stream)
        with torch.cuda.stream(stream):
            out = f(*args, **kwargs)
        self.produced.append(out)
        return out

    def join(self, *tensors: torch.Tensor) -> None:
        for stream in self.side:
            self.main.wait_stream(stream)
        for t in (*self.produced, *tensors):
            t.record_stream(self.main)


def _side_streams(h: torch.Tensor) -> _SideStreams | None:
    """Side streams for a node's convolutions on ``h``'s device: on a CUDA device, and not under torch.compile,
    whose graphs hold no streams."""
    return _SideStreams(h.device) if h.is_cuda and not torch.compiler.is_compiling() else None


class NodeOps(nn.Module):
    """Every candidate op of the ``n`` edges that read one state, batched; with ``groups`` > 1, of the edges
    that read ``groups`` states of the same shape, stacked along channels (groups·C), each read by n/groups
    consecutive edges (the cell's two inputs: one op for their 8 edges)."""

    def __init__(self, c: int, n: int, stride: int, groups: int = 1):
        super().__init__()
        assert n % groups == 0, f"{n} edges do not split into {groups} groups"
        self.c, self.n, self.stride, self.groups = c, n, stride, groups
        self.max_bn = _bn(groups * c)
        self.avg_bn = _bn(groups * c)
        self.skip = GroupedFactorizedReduce(c, n, groups) if stride == 2 else None
        self.sep_conv_3x3 = GroupedConvBranch(c, n, 3, stride, 1, 1, blocks=2, groups=groups)
        self.sep_conv_5x5 = GroupedConvBranch(c, n, 5, stride, 2, 1, blocks=2, groups=groups)
        self.dil_conv_3x3 = GroupedConvBranch(c, n, 3, stride, 2, 2, blocks=1, groups=groups)
        self.dil_conv_5x5 = GroupedConvBranch(c, n, 5, stride, 4, 2, blocks=1, groups=groups)
        self.fused_mix = _option("mix") == "fused"
        self.fused_bn = _option("mix") == "fused_bn"
        self.side_streams = _option("streams") == "branches"

    #: The ops whose outputs are per edge, in PRIMITIVES order (consecutive columns of p); with the torch
    #: mix, each one's op weight is folded into its last batch norm as a per-channel scale.
    PER_EDGE = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")

    def _per_edge_modules(self) -> dict[str, nn.Module]:
        """The per-edge ops' modules, in PRIMITIVES order (consecutive columns of p)."""
        mods: dict[str, nn.Module] = {"skip_connect": self.skip} if self.skip is not None else {}
        return mods | {name: getattr(self, name) for name in self.PER_EDGE}

    def forward(self, h: torch.Tensor, p: torch.Tensor, stats: list[StatsUpdate] | None = None) -> torch.Tensor:
        """Mixed outputs of the n edges, (B, n, C, H', W'), of the state ``h`` (B, groups·C, H, W); ``p``: their
        (n, 8) op weights. With mix "fused_bn" in training mode, the running statistics that bn_mix's batch norms
        computed are updated at once, or appended to ``stats`` for the caller to update together with other
        nodes'."""
        s, n, c, groups = self.stride, self.n, self.c, self.groups
        relu = F.relu(h)
        if self.sep_conv_3x3.reads_node:
            rep = relu
        elif groups == 1:
            rep = relu.repeat(1, n, 1, 1)  # (B, n·C, H, W): one copy per edge, for the grouped convolutions
        else:  # each group's copies for its n/groups edges
            bsz, _, height, width = relu.shape
            rep = relu.view(bsz, groups, 1, c, height, width).expand(bsz, groups, n // groups, c, height, width)
            rep = rep.reshape(bsz, n * c, height, width)
        if rep is not relu and h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous():
            rep = rep.contiguous(memory_format=torch.channels_last)
        per_edge = self._per_edge_modules()
        last_bns = [m.bn if isinstance(m, GroupedFactorizedReduce) else m.bn[-1] for m in per_edge.values()]
        # bn_mix computes batch statistics: in training mode only (an evaluation runs the torch mix)
        fuse_bn = self.fused_bn and all(bn.training for bn in last_bns)
        scale: dict[str, torch.Tensor | None] = dict.fromkeys(per_edge)
        torch_mix = not self.fused_mix and not fuse_bn
        if torch_mix:
            # p's columns: 'none', the shared outputs', the per-edge ops' (PRIMITIVES order); one split, whose
            # backward is one kernel where two slices' would be two each and an add
            _, shared_w, edge_w = p.split([1, len(PRIMITIVES) - 1 - len(per_edge), len(per_edge)], dim=1)
            # w·BN(x) = BN(x; γ = w, β = 0): each per-edge op's weight, repeated over its edge's C channels,
            # scales its last batch norm (no multiply of the output forward, nor of its gradient backward).
            cols = edge_w.t()  # (ops, n), in PRIMITIVES order
            dense = cols.unsqueeze(-1).expand(len(per_edge), n, c).contiguous()  # one copy (reshape would not copy for n = 1)
            scale = dict(zip(per_edge, dense.view(len(per_edge), n * c).unbind(0)))
        # Each op's output: per edge (B, n·C, H', W'), or shared by every edge (B, C, H', W'); with fuse_bn, the
        # per-edge ops' outputs before their last batch norm. The convolutions first (on side streams with
        # streams "branches"), then the pooling and the skip on the caller's stream, alongside them.
        lanes = _side_streams(h) if self.side_streams else None
        pending: list[StatsUpdate] = [] if stats is None else stats
        outs: dict[str, torch.Tensor] = {}
        kwargs = {"normalize": not fuse_bn, "stats": pending if fuse_bn else None}
        for lane, name in enumerate(self.PER_EDGE):  # the two dilated convolutions share the third side stream
            if lanes is None:
                outs[name] = per_edge[name](rep, scale[name], **kwargs)
            else:
                outs[name] = lanes.run(min(lane, 2), per_edge[name], rep, scale[name], **kwargs)
        outs["max_pool_3x3"] = self.max_bn(F.max_pool2d(h, 3, s, 1))
        outs["avg_pool_3x3"] = self.avg_bn(F.avg_pool2d(h, 3, s, 1, count_include_pad=False))
        outs["skip_connect"] = h if self.skip is None else self.skip(relu, scale["skip_connect"], normalize=not fuse_bn)
        if lanes is not None:  # the branches' batch statistics (fused_bn) are used on the caller's stream too
            lanes.join(*(t for _, mean, var, _ in pending for t in (mean, var)))
        bsz, _, height, width = outs["max_pool_3x3"].shape
        if self.fused_mix:  # one node_mix call over the outputs in PRIMITIVES order ('none' adds zero)
            xs = [outs[name].reshape(bsz, outs[name].shape[1] // c, c * height * width) for name in PRIMITIVES[1:]]
            if groups > 1:  # node_mix's shared inputs are one for all edges: copy each group's per edge
                xs = [x if x.shape[1] == n else x.unsqueeze(2).expand(bsz, groups, n // groups, x.shape[2]).reshape(bsz, n, -1)
                      for x in xs]
            return ops.node_mix(xs, p[:, 1:]).view(bsz, n, c, height, width)
        shared = [name for name in PRIMITIVES[1:] if name not in per_edge]  # consecutive columns of p from 1
        if fuse_bn:  # one op: the per-edge ops' last batch norms, and every output weighted and summed
            assert len({bn.eps for bn in last_bns}) == 1, "bn_mix needs one eps for all batch norms of a node"
            mixed, mean, var = ops.bn_mix([outs[name] for name in per_edge], [outs[name] for name in shared], p[:, 1:],
                                          last_bns[0].eps)
            pending.append((last_bns, mean, var, bsz * height * width))
            if stats is None:
                _update_running_stats(pending)
            return mixed.view(bsz, n, c, height, width)
        # The weighted per-edge outputs summed, then the shared outputs times their edges' weights added
        mixed = functools.reduce(torch.add, (outs[name].view(bsz, n, c, height, width) for name in per_edge))
        assert torch_mix and shared_w.shape[1] == len(shared)
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
        for name in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"):
            getattr(self, name).load_from([o[OP[name]] for o in ops])


class FastSearchCell(nn.Module):
    """A supernet cell with the edges that read each node batched (same function as ``SearchCell``)."""

    def __init__(self, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        from mdarts_rs.supernet import search_preprocessing

        self.reduction = reduction
        self.preprocess0, self.preprocess1 = search_preprocessing(c_prev_prev, c_prev, c, reduction_prev)
        for pre in (self.preprocess0, self.preprocess1):
            _adopt_batch_norms(pre)
        # nodes[k] batches the edges that read states _states[k] (states 0..4 are read by some node; the last
        # node is read by none); with paired inputs, nodes[0] reads states 0 and 1 stacked along channels
        self._states = [[0, 1], *([j] for j in range(2, STEPS + 1))] if _option("inputs") == "paired" else [[j] for j in range(STEPS + 1)]
        self.nodes = nn.ModuleList()
        self._edges: list[list[int]] = []
        for states in self._states:
            edges = [edge_id(i, j) for j in states for i in readers(j)]
            self.nodes.append(NodeOps(c, len(edges), 2 if reduction and states[0] < 2 else 1, groups=len(states)))
            self._edges.append(edges)
        # The rows of p grouped by the state their edges read (a permutation of the 14 edges), as a device
        # buffer: one gather per cell, then one split into the states' rows (a Python list index would copy
        # from the host at every step, which a CUDA graph cannot capture; split's backward is one kernel).
        self.register_buffer("edge_order", torch.tensor([e for edges in self._edges for e in edges]), persistent=False)
        self._sizes = [len(edges) for edges in self._edges]
        # Every batch norm of the cell runs once per forward (by itself or inside bn_mix): the cell counts
        # their training batches with one foreach kernel (not a module attribute: no second registration)
        self._batch_norms = tuple(m for m in self.modules() if isinstance(m, BatchNorm))
        for bn in self._batch_norms:
            bn.counted_by_cell = True

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, p: torch.Tensor, sparse: bool = False) -> torch.Tensor:
        """``p``: (14, 8) op weights of this cell's table. ``sparse`` is accepted for interface parity: the
        dense sum with zero weights is already exact."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        rows = p.index_select(0, self.edge_order).split(self._sizes)  # rows[k]: the edges that nodes[k] batches
        # The mixed outputs of each state's readers, one view per edge: unbind's backward stacks the edges'
        # gradients in one kernel, where indexing would zero-fill and accumulate a full copy per edge.
        stats: list[StatsUpdate] = []  # the nodes' batch-norm statistics (mix "fused_bn"), updated together
        mixed: list[tuple[torch.Tensor, ...]] = []
        if len(self._states[0]) == 2:  # paired inputs: one node op reads both, stacked along channels
            both = self.nodes[0](torch.cat(states, dim=1), rows[0], stats).unbind(1)
            mixed += [both[: len(readers(0))], both[len(readers(0)) :]]
        else:
            mixed += [self.nodes[j](states[j], rows[j], stats).unbind(1) for j in (0, 1)]
        first = len(self.nodes) - (STEPS - 1)  # nodes[first + i] reads state i + 2
        for i in range(STEPS):
            terms = [mixed[j][i - readers(j)[0]] for j in range(i + 2)]
            node = functools.reduce(torch.add, terms)  # no 0 + first term, which would be a kernel of its own
            states.append(node)  # type: ignore[arg-type]
            if i + 2 <= STEPS:
                mixed.append(self.nodes[first + i](node, rows[first + i], stats).unbind(1))  # type: ignore[arg-type]
        if stats:
            _update_running_stats(stats)
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
        fast = cls(c_pp, pre1[1].in_channels, c, cell.reduction, reduction_prev)  # type: ignore[index, arg-type]
        fast.preprocess0.load_state_dict(pre0.state_dict())  # type: ignore[union-attr]
        fast.preprocess1.load_state_dict(pre1.state_dict())  # type: ignore[union-attr]
        for j, node in enumerate(fast.nodes):
            node.load_from([cell.edges[e] for e in fast._edges[j]])  # type: ignore[index, union-attr]
        return fast
