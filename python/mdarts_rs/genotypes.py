"""Published DARTS-family genotypes, by name: what their authors' repositories print, with the source.

Every command and function that takes a genotype also takes these names (case-insensitive):
``mdarts-rs info darts_v2``, ``mdarts-rs train --genotype pc_darts``, ``mdarts_rs.load_genotype("pdarts")``.
"""

from __future__ import annotations

from typing import NamedTuple


class Published(NamedTuple):
    """A published genotype: its text as its authors print it, and where it comes from."""

    text: str
    source: str


_DARTS = "Liu, Simonyan, Yang, DARTS: Differentiable Architecture Search (ICLR 2019), github.com/quark0/darts"
_PDARTS = "Chen, Xie, Wu, Tian, Progressive DARTS (ICCV 2019), github.com/chenxin061/pdarts"
_PCDARTS = "Xu et al., PC-DARTS: Partial Channel Connections (ICLR 2020), github.com/yuhuixu1993/PC-DARTS"

#: name -> published genotype. CIFAR-10 cells, except pc_darts_imagenet (searched on ImageNet).
PUBLISHED: dict[str, Published] = {
    "darts_v1": Published(
        "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
        "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], "
        "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
        "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])",
        _DARTS + " (first order)",
    ),
    "darts_v2": Published(
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
        "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
        "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])",
        _DARTS + " (second order)",
    ),
    "pdarts": Published(
        "Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), ('dil_conv_5x5', 4)], normal_concat=range(2, 6), "
        "reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 2), ('max_pool_3x3', 0), "
        "('dil_conv_3x3', 1), ('dil_conv_3x3', 1), ('dil_conv_5x5', 3)], reduce_concat=range(2, 6))",
        _PDARTS,
    ),
    "pc_darts": Published(
        "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
        "('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], normal_concat=range(2, 6), "
        "reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), "
        "('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))",
        _PCDARTS + " (PC_DARTS_cifar)",
    ),
    "pc_darts_imagenet": Published(
        "Genotype(normal=[('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('skip_connect', 1), "
        "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('dil_conv_5x5', 4)], normal_concat=range(2, 6), "
        "reduce=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_5x5', 2), ('max_pool_3x3', 1), ('sep_conv_3x3', 2), "
        "('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 3)], reduce_concat=range(2, 6))",
        _PCDARTS + " (PC_DARTS_image, searched on ImageNet)",
    ),
}


def published(name: str) -> Published | None:
    """The published genotype called ``name`` (case-insensitive; '-' reads as '_'), or None."""
    return PUBLISHED.get(name.strip().lower().replace("-", "_"))
