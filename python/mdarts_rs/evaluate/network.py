"""Evaluation networks built from genotypes, as DARTS evaluates its cells (Liu et al. 2019, section 3.2):
a CIFAR network (3C-channel stem) and an ImageNet network (two stride-2 stems, mobile setting), reduction
cells at layers//3 and 2·layers//3, an optional auxiliary head after the second reduction, and drop-path.

A multi-level genotype (Li, Chen, Sun 2021) gives each level its own cells: the low, mid and high normal
cells and the two reduction cells; a DARTS genotype puts the same cell everywhere and yields exactly
DARTS' network. Also: parameter and multiply-accumulate counts.
"""

from __future__ import annotations

import torch
from torch import nn

from mdarts_rs._core import AlphaLayout, CellGenotype, Genotype, MultiLevelGenotype
from mdarts_rs.geometry import stem_plan
from mdarts_rs.primitives import OPS, FactorizedReduce, ReLUConvBN, count_params, make_stem

__all__ = ["EvalCell", "NetworkCIFAR", "NetworkImageNet", "count_macs", "count_params", "drop_path", "eval_network"]


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of a branch with probability ``drop_prob`` and rescale the rest (FractalNet's
    drop-path, as DARTS applies it to every non-identity op during training)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class EvalCell(nn.Module):
    """A derived cell: each intermediate node sums its 2 kept edges' ops; the output concatenates ``concat``."""

    def __init__(
        self, cell: CellGenotype, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool
    ):
        super().__init__()
        self.reduction = reduction
        self.genotype = cell
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, c)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        self.ops = nn.ModuleList()
        self.indices: list[int] = []
        for name, index in cell.edges:
            self.ops.append(OPS[name](c, 2 if reduction and index < 2 else 1, True))
            self.indices.append(index)
        self.concat = cell.concat
        self.multiplier = len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(len(self.ops) // 2):
            hs = []
            for k in (2 * i, 2 * i + 1):
                h = self.ops[k](states[self.indices[k]])
                if self.training and drop_prob > 0.0 and not isinstance(self.ops[k], nn.Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier on the 8×8 features after the second reduction (other sides, from inputs that are
    not 32 pixels after the stem, are average-pooled to the same 2×2; the weights are the same)."""

    def __init__(self, c: int, num_classes: int, feature_size: int = 8):
        super().__init__()
        pool = (
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False)  # 8×8 -> 2×2
            if feature_size == 8
            else nn.AdaptiveAvgPool2d(2)
        )
        self.features = nn.Sequential(
            nn.ReLU(),
            pool,
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """Auxiliary classifier on the 14×14 features after the second reduction (no BN after the 2×2 conv,
    as in the DARTS experiments)."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _cells_of(genotype: Genotype | MultiLevelGenotype, layers: int) -> tuple[AlphaLayout, dict[str, CellGenotype]]:
    mode = "shared" if isinstance(genotype, Genotype) else "multilevel"
    return AlphaLayout(mode, layers), genotype.cells


class _Network(nn.Module):
    """Cells, classifier and auxiliary head shared by both networks."""

    drop_path_prob: float = 0.0

    def _build_cells(
        self,
        genotype,
        layers: int,
        c_pp: int,
        c_p: int,
        c: int,
        reduction_prev: bool,
        num_classes: int,
        auxiliary: bool,
        aux_cls,
        aux_kwargs: dict | None = None,
    ) -> int:
        self.layout, cells = _cells_of(genotype, layers)
        self.layers = layers
        self.cells = nn.ModuleList()
        self.aux_index = 2 * layers // 3
        c_aux = None
        for i, (reduction, table) in enumerate(zip(self.layout.reduction, self.layout.cell_tables)):
            if reduction:
                c *= 2
            cell = EvalCell(cells[table], c_pp, c_p, c, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c
            if i == self.aux_index:
                c_aux = c_p
        self.auxiliary_head = aux_cls(c_aux, num_classes, **(aux_kwargs or {})) if auxiliary else None
        self.classifier = nn.Linear(c_p, num_classes)
        return c_p

    def _cells_forward(self, s0: torch.Tensor, s1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        return s1, logits_aux


class NetworkCIFAR(_Network):
    """DARTS' CIFAR evaluation network. ``forward`` returns (logits, auxiliary logits or None).

    ``in_channels`` and ``image_size`` describe the inputs: up to 32 pixels the stem is DARTS' 3×3 convolution,
    larger inputs are brought to CIFAR scale by stride-2 convolutions first (``primitives.make_stem``)."""

    def __init__(
        self,
        genotype: Genotype | MultiLevelGenotype,
        C: int = 36,
        num_classes: int = 10,
        layers: int = 20,
        auxiliary: bool = True,
        stem_multiplier: int = 3,
        in_channels: int = 3,
        image_size: int = 32,
    ):
        super().__init__()
        c_stem = stem_multiplier * C
        _, side = stem_plan(image_size)
        self.in_channels, self.image_size = in_channels, image_size
        self.stem = make_stem(in_channels, c_stem, image_size)
        self._build_cells(
            genotype,
            layers,
            c_stem,
            c_stem,
            C,
            False,
            num_classes,
            auxiliary,
            AuxiliaryHeadCIFAR,
            {"feature_size": side // 4},
        )
        self.global_pooling = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.stem(x)
        out, aux = self._cells_forward(s, s)
        return self.classifier(self.global_pooling(out).flatten(1)), aux


class NetworkImageNet(_Network):
    """DARTS' ImageNet evaluation network (mobile setting: 224×224 inputs, two stride-2 stems)."""

    def __init__(
        self,
        genotype: Genotype | MultiLevelGenotype,
        C: int = 48,
        num_classes: int = 1000,
        layers: int = 14,
        auxiliary: bool = True,
    ):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
        self._build_cells(genotype, layers, C, C, C, True, num_classes, auxiliary, AuxiliaryHeadImageNet)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)  # 7×7 at 224×224, as DARTS' AvgPool2d(7)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        out, aux = self._cells_forward(s0, s1)
        return self.classifier(self.global_pooling(out).flatten(1)), aux


def eval_network(
    genotype: Genotype | MultiLevelGenotype,
    dataset: str = "cifar10",
    C: int | None = None,
    layers: int | None = None,
    auxiliary: bool = True,
    drop_path: float = 0.0,
    num_classes: int | None = None,
    in_channels: int = 3,
    image_size: int | None = None,
) -> NetworkCIFAR | NetworkImageNet:
    """The evaluation network of ``genotype``: the CIFAR network (default 20 cells, C = 36) for CIFAR-10,
    CIFAR-100 and the user's data ("arrays", "folder": ``in_channels`` channels of ``image_size`` pixels, 32 by
    default), or the ImageNet network (14 cells, C = 48). ``drop_path`` sets the initial drop-path probability
    (training raises it linearly)."""
    if not isinstance(genotype, (Genotype, MultiLevelGenotype)):
        raise TypeError(
            f"eval_network: genotype must be a Genotype or MultiLevelGenotype (mdarts_rs.load_genotype reads one from "
            f"a file, a published name or text), got {type(genotype).__name__}"
        )
    if dataset in ("cifar10", "cifar100", "arrays", "folder"):
        default_classes = {"cifar10": 10, "cifar100": 100}.get(dataset)
        if num_classes is None and default_classes is None:
            raise ValueError(f"a {dataset} network needs num_classes")
        net: NetworkCIFAR | NetworkImageNet = NetworkCIFAR(
            genotype,
            C or 36,
            num_classes or default_classes or 0,
            layers or 20,
            auxiliary,
            in_channels=in_channels,
            image_size=image_size or 32,
        )
    elif dataset == "imagenet":
        net = NetworkImageNet(genotype, C or 48, num_classes or 1000, layers or 14, auxiliary)
    else:
        raise ValueError(f"dataset must be 'cifar10', 'cifar100', 'arrays', 'folder' or 'imagenet', got {dataset!r}")
    net.drop_path_prob = drop_path
    return net


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 in eval mode: every convolution
    (output elements × input channels per group × kernel area) and linear layer (in × out features).
    Batch norm, pooling, activations and additions are not counted, nor is the auxiliary head (inactive in
    eval mode). This is the convention of the multiply-add counts in DARTS' mobile-setting table."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp, out) -> None:
        nonlocal total
        total += out.numel() // m.out_features * m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        model(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total
