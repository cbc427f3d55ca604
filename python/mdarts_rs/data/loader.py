"""Augmented batches made in Rust worker threads, handed to torch without a copy (``CifarLoader``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from mdarts_rs._core import CIFAR10_MEAN, CIFAR10_STD, BatchLoader
from mdarts_rs.data.dataset import Dataset

__all__ = ["CifarLoader", "crop_padding_for"]


def crop_padding_for(side: int) -> int:
    """DARTS' 4 pixels of crop padding at 32 pixels, scaled with the image side (8 at 64, 28 at 224)."""
    return max(1, round(4 * side / 32))


class CifarLoader:
    """Augmented batches of square images (N, C, S, S) as torch tensors, made in Rust worker threads;
    CIFAR-10 by default (its mean and std, 4 pixels of crop padding).

    Each epoch reshuffles (seeded by ``(seed, epoch)``) and augments every image with randomness keyed by
    ``(seed, epoch, batch, position)``, so a run is reproducible whatever the number of workers. Batches
    reach torch through ``torch.from_numpy`` on arrays Rust owns, without a copy. With ``normalize=False``
    the batches stay uint8 until they reach ``device``, where they are normalised (less to move to a GPU).
    ``pin_memory`` copies each batch into page-locked memory for an asynchronous host-to-device copy.
    ``mean``/``std`` (pixel / 255, one per channel) default to CIFAR-10's; ``crop_padding`` defaults to 4
    pixels at 32 and scales with the image side; ``num_classes`` checks every label.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray | None = None,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: bool = True,
        cutout: int = 0,
        normalize: bool = True,
        channels_last: bool = False,
        seed: int = 0,
        workers: int | None = None,
        prefetch: int = 2,
        device: str | torch.device = "cpu",
        pin_memory: bool = False,
        mean: tuple[float, ...] | list[float] | None = None,
        std: tuple[float, ...] | list[float] | None = None,
        num_classes: int = 10,
        crop_padding: int | None = None,
    ) -> None:
        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        if crop_padding is None:
            crop_padding = crop_padding_for(images.shape[-1])
        if mean is None and std is None:
            mean, std = CIFAR10_MEAN, CIFAR10_STD
        self._loader = BatchLoader(
            np.ascontiguousarray(images, dtype=np.uint8),
            np.ascontiguousarray(labels, dtype=np.int64),
            None if indices is None else np.ascontiguousarray(indices, dtype=np.int64),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            crop_padding=crop_padding if augment else 0,
            flip=augment,
            cutout=cutout,
            normalize=normalize,
            channels_last=channels_last,
            seed=seed,
            workers=workers,
            prefetch=prefetch,
            mean=list(mean),  # type: ignore[arg-type]
            std=list(std),  # type: ignore[arg-type]
            num_classes=num_classes,
        )
        self.normalize = normalize
        self.channels_last = channels_last
        self.device = torch.device(device)
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.epoch = 0
        c = images.shape[1]
        mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, c, 1, 1)  # type: ignore[arg-type]
        std_t = torch.tensor(list(std), dtype=torch.float32).view(1, c, 1, 1)  # type: ignore[arg-type]
        self._mean, self._std = mean_t.to(self.device), std_t.to(self.device)

    @classmethod
    def of(
        cls,
        data: Dataset,
        indices: np.ndarray | None,
        *,
        device: torch.device,
        workers: int | None,
        **kw: object,
    ) -> CifarLoader:
        """A loader of ``data``'s images at ``indices`` (None: all), normalised with its mean and std (unless ``kw``
        gives others) and checked against its classes, its batches on ``device`` (through page-locked memory for a
        GPU); ``kw``: the other options."""
        options = dict(
            workers=workers,
            device=device,
            pin_memory=device.type == "cuda",
            mean=data.mean,
            std=data.std,
            num_classes=data.num_classes,
        )
        return cls(data.images, data.labels, indices, **{**options, **kw})  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._loader)

    @property
    def num_images(self) -> int:
        return self._loader.num_images

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` next (for resuming a run)."""
        self.epoch = epoch

    def _to_torch(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        if self.channels_last:
            xt = xt.permute(0, 3, 1, 2)  # (N, H, W, C) memory seen as (N, C, H, W), channels-last strides
        if self.pin_memory:
            xt, yt = xt.pin_memory(), yt.pin_memory()
        if self.device.type != "cpu":
            xt = xt.to(self.device, non_blocking=True)
            yt = yt.to(self.device, non_blocking=True)
        if not self.normalize and self.device.type != "cpu":
            xt = (xt.float().div_(255.0) - self._mean) / self._std
        return xt, yt

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from batch ``start`` on (to resume inside an epoch)."""
        for x, y in self._loader.epoch(epoch, start):
            yield self._to_torch(x, y)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self.batches(epoch)
