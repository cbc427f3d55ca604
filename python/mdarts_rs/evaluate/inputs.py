"""The data of a training run: this rank's shard of the training images (augmented, cutout) and the test set, as
DARTS trains on CIFAR-10; an ImageNet folder through torchvision; a held-out test set for data without one."""

from __future__ import annotations

import os

import numpy as np
import torch

from mdarts_rs.config import TrainConfig, derived_seed
from mdarts_rs.data import CifarLoader, Dataset, channel_stats, has_test_set, holdout_split, load_split
from mdarts_rs.run import data_fingerprint


def shard_indices(n: int, seed: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's fixed share of ``n`` training images: a seeded permutation dealt out round-robin."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[rank::world_size])


def scaled_cutout(cutout: int, image_size: int) -> int:
    """``--cutout`` is given for 32-pixel images (DARTS' 16); other sides scale it (32 at 64), at most the side."""
    return min(image_size, round(cutout * image_size / 32))


class CifarData:
    """The training shard (augmented, cutout) and test set (unaugmented) of a dataset for this rank of
    ``world`` (rank, world size), normalised with the training images' mean and std."""

    def __init__(
        self, cfg: TrainConfig, train: Dataset, test: Dataset, device: torch.device, world: tuple[int, int] = (0, 1)
    ):
        rank, ws = world
        if cfg.batch_size % ws:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {ws} processes")
        common = dict(workers=cfg.workers, device=device)
        self.train = CifarLoader.of(
            train,
            shard_indices(len(train.labels), cfg.seed, rank, ws),
            batch_size=cfg.batch_size // ws,
            cutout=scaled_cutout(cfg.cutout, train.image_size),
            seed=derived_seed(cfg.seed, rank),
            **common,  # type: ignore[arg-type]
        )
        test_idx = np.arange(rank, len(test.labels), ws)  # each rank tests its share; metrics are summed
        # normalised as the training images are
        self.test = CifarLoader.of(
            test,
            test_idx,
            batch_size=256,
            shuffle=False,
            drop_last=False,
            augment=False,
            mean=train.mean,
            std=train.std,
            num_classes=train.num_classes,
            **common,  # type: ignore[arg-type]
        )


def imagenet_batches(cfg: TrainConfig, device: torch.device, world: tuple[int, int] = (0, 1)):
    """ImageFolder train/val loaders with the ImageNet recipe's transforms (needs torchvision)."""
    try:  # torchvision: an optional dependency, only for the ImageNet recipe
        from torchvision import datasets, transforms
    except ImportError as e:
        raise RuntimeError("ImageNet training needs torchvision (pip install 'mdarts-rs[bench]')") from e
    assert cfg.data is not None, "ImageNet training needs --data"
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.4, 0.4, 0.4, 0.2),
            transforms.ToTensor(),
            normalize,
        ]
    )
    test_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize])
    for sub in ("train", "val"):
        if not (cfg.data / sub).is_dir():
            raise FileNotFoundError(f"{cfg.data / sub}: ImageNet needs train/ and val/ ImageFolder directories")
    train_set = datasets.ImageFolder(str(cfg.data / "train"), train_tf)
    test_set = datasets.ImageFolder(str(cfg.data / "val"), test_tf)
    rank, ws = world
    sampler = torch.utils.data.DistributedSampler(train_set, ws, rank, seed=cfg.seed) if ws > 1 else None
    workers = cfg.workers if cfg.workers is not None else min(8, os.cpu_count() or 1)
    train = torch.utils.data.DataLoader(
        train_set,
        batch_size=cfg.batch_size // ws,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    test = torch.utils.data.DataLoader(
        test_set,
        batch_size=256,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        sampler=torch.utils.data.DistributedSampler(test_set, ws, rank, shuffle=False) if ws > 1 else None,
    )

    class _Batches:
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def set_epoch(self, epoch: int) -> None:
            if sampler is not None:
                sampler.set_epoch(epoch)

        def __iter__(self):
            for x, y in self.loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return _Batches(train), _Batches(test), list(train_set.classes)


def train_test_data(cfg: TrainConfig, quiet: bool = True) -> tuple[Dataset, Dataset, list[int] | None]:
    """The training and test sets of ``cfg``'s dataset, the test set normalised as the training set. Data
    without its own test set (an image folder without train/ and val/, an arrays file without test_images)
    holds out ``cfg.holdout`` of its images, drawn from ``cfg.seed``; their indices come third (else None). With
    ``cfg.test_on`` "holdout" every dataset does so, and its test set is not read (a validation split)."""
    train = load_split(cfg, "train", quiet)
    if cfg.test_on == "test" and has_test_set(cfg.dataset, cfg.data):  # type: ignore[arg-type]
        test = load_split(cfg, "test", quiet)
        if (test.channels, test.image_size) != (train.channels, train.image_size):
            raise ValueError(
                f"{cfg.data}: the test images are {test.channels}×{test.image_size}², the training images "
                f"{train.channels}×{train.image_size}²"
            )
        if test.class_names != train.class_names:
            raise ValueError(
                f"{cfg.data}: the test set's classes {test.class_names[:5]} differ from the training set's "
                f"{train.class_names[:5]}"
            )
        test.mean, test.std = train.mean, train.std
        return train, test, None
    tr, te = holdout_split(len(train), cfg.seed, cfg.holdout)
    test = train.subset(te)
    train = train.subset(tr)
    if train.kind not in ("cifar10", "cifar100"):  # their published statistics stand; others' are the images'
        train.mean, train.std = channel_stats(train.images)
    test.mean, test.std = train.mean, train.std
    held_out = {"fraction": cfg.holdout, "seed": cfg.seed, "test_images": len(te)}
    train.info["holdout"] = test.info["holdout"] = held_out | {"data": data_fingerprint(test.images, test.labels)}
    return train, test, [int(i) for i in te]
