"""The input sizes the networks take: how the stem brings an image side to the 32 pixels DARTS' cells work at.
Plain arithmetic, read by the configuration's checks without loading torch."""

from __future__ import annotations

#: Largest input side handled at full resolution; larger inputs are halved by the stem until they fit.
CIFAR_SCALE = 32


def stem_plan(image_size: int) -> tuple[int, int]:
    """(stride-2 convolutions of the stem, side of the features it gives) for square inputs of
    ``image_size``: none up to 32 pixels (DARTS' CIFAR stem), else as many as bring the side to at most 32
    (one at 64, two at 128, three at 224 -> 28, as PC-DARTS' ImageNet search network). ValueError where the
    two reduction cells would meet an odd side (the features must be a multiple of 4 pixels)."""
    if image_size < 4:
        raise ValueError(f"image_size must be at least 4 pixels, got {image_size}")
    k, side = _stem_side(image_size)
    if side % 4:
        good = [s for s in range(max(4, image_size - 8), image_size + 9) if _stem_side(s)[1] % 4 == 0]
        raise ValueError(
            f"image_size {image_size} gives {side}×{side} features after the stem, which the two reduction cells "
            f"cannot halve twice (they need a multiple of 4); use e.g. {', '.join(map(str, good[:4]))}"
        )
    return k, side


def _stem_side(image_size: int) -> tuple[int, int]:
    k, side = 0, image_size
    while side > CIFAR_SCALE:
        side, k = (side + 1) // 2, k + 1  # a 3×3 convolution of stride 2 and padding 1 gives ceil(side / 2)
    return k, side


def describe_stem(image_size: int) -> str:
    """The stem ``make_stem`` builds for ``image_size``, in words (for ``mdarts-rs info`` and the README)."""
    k, side = stem_plan(image_size)
    if k == 0:
        return f"3x3 conv ({image_size}x{image_size} kept)"
    return f"{k} stride-2 3x3 conv{'s' if k > 1 else ''} ({image_size} -> {side})"
