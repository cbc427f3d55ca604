"""The candidate operations of the DARTS search space and the building blocks shared by the search supernet
and the evaluation networks (Liu et al. 2019, appendix A.1: ReLU-conv-BN order, separable convolutions
applied twice, dilated separable convolutions, factorized reduction)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mdarts_rs._core import PRIMITIVES
from mdarts_rs.geometry import CIFAR_SCALE, stem_plan


class ReLUConvBN(nn.Sequential):
    """ReLU, convolution, batch norm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, dilated depthwise convolution, pointwise convolution, batch norm."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int, affine: bool = True
    ):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked (ReLU, depthwise, pointwise, batch norm) blocks; only the first may stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, 1, padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class Zero(nn.Module):
    """The 'none' op: zeros of the output shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two stride-2 1×1 convolutions, the second offset by one pixel."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        assert c_out % 2 == 0, f"FactorizedReduce needs an even output width, got {c_out}"
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


OpFactory = Callable[[int, int, bool], nn.Module]

#: Constructors of the candidate ops, by name: (channels, stride, affine) -> module.
OPS: dict[str, OpFactory] = {
    "none": lambda c, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda c, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda c, stride, affine: nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine),
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine),
    "dil_conv_3x3": lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine),
}
assert set(OPS) == set(PRIMITIVES), "every primitive defined in Rust needs a constructor"


def count_params(model: nn.Module) -> int:
    """Network weights: every parameter except architecture parameters (``alpha*``) and the auxiliary head,
    as DARTS counts them for its published model sizes."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if "auxiliary" not in name and not name.split(".")[-1].startswith("alpha")
    )


def search_preprocessing(c_prev_prev: int, c_prev: int, c: int, reduction_prev: bool) -> tuple[nn.Module, nn.Module]:
    """The non-affine modules that bring a search cell's two inputs to ``c`` channels at its resolution."""
    if reduction_prev:
        pre0: nn.Module = FactorizedReduce(c_prev_prev, c, affine=False)
    else:
        pre0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine=False)
    return pre0, ReLUConvBN(c_prev, c, 1, 1, 0, affine=False)


class PartialChannels:
    """The parts of a PC-DARTS node around its mixed ops (``partial`` K): the slice the ops see, and the
    node's output from the sum of its edges' mixed outputs, the bypassed channels and the channel shuffle.
    Shared by ``supernet.SearchCell`` and ``fastcell.FastSearchCell``."""

    def __init__(self, partial: int, reduction: bool, edge_weights: torch.Tensor | None):
        self.partial, self.reduction, self.edge_weights = partial, reduction, edge_weights
        self._bypass: dict[int, torch.Tensor] = {}

    def ops_input(self, h: torch.Tensor) -> torch.Tensor:
        """The channels of ``h`` that the mixed ops see: the first 1/K (a contiguous copy, which the convolutions
        read fastest)."""
        return h if self.partial == 1 else h[:, : h.shape[1] // self.partial].contiguous()

    def bypass(self, states: list[torch.Tensor], j: int) -> torch.Tensor:
        """The channels of state ``j`` that bypass the ops (2×2 max-pooled on a reduction's cell inputs)."""
        if j not in self._bypass:
            h = states[j]
            rest = h[:, h.shape[1] // self.partial :]
            self._bypass[j] = F.max_pool2d(rest, 2, 2) if self.reduction and j < 2 else rest
        return self._bypass[j]

    def node(self, mixed: torch.Tensor, states: list[torch.Tensor], row: list[int]) -> torch.Tensor:
        """A node from the sum of its edges' mixed outputs (already weighted by their edge weights): with K > 1
        the bypassed channels, weighted alike, are appended and the whole channel-shuffled in K groups."""
        if self.partial == 1:
            return mixed
        w = self.edge_weights
        parts = [self.bypass(states, j) if w is None else w[e] * self.bypass(states, j) for j, e in enumerate(row)]
        out = torch.cat([mixed, functools.reduce(torch.add, parts)], dim=1)
        return channel_shuffle(out, self.partial)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` equal channel groups: channel i of group g goes to i·groups + g."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def make_stem(c_in: int, c_out: int, image_size: int = CIFAR_SCALE) -> nn.Sequential:
    """The stem: DARTS' 3×3 convolution and batch norm for inputs up to 32 pixels (exactly DARTS' module); for
    larger inputs, ``k`` stride-2 3×3 convolutions (``stem_plan``), each followed by batch norm and all but the
    last by ReLU, the intermediate ones c_out // 2 wide, as PC-DARTS' ImageNet search stem."""
    k, _ = stem_plan(image_size)
    if k == 0:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
    layers: list[nn.Module] = []
    c = c_in
    for i in range(k):
        c_next = c_out if i == k - 1 else max(1, c_out // 2)
        layers += [nn.Conv2d(c, c_next, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_next)]
        if i < k - 1:
            layers.append(nn.ReLU(inplace=True))
        c = c_next
    return nn.Sequential(*layers)
