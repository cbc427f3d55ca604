"""Evaluation: the networks a genotype describes, their training and testing, and using a trained one."""

from mdarts_rs.evaluate.trainer import (
    CifarData,
    TrainConfig,
    Trainer,
    build_trainer,
    evaluate_checkpoint,
    evaluate_network,
    lr_at,
    shard_indices,
    train,
    train_test_data,
)

__all__ = [
    "CifarData",
    "TrainConfig",
    "Trainer",
    "build_trainer",
    "evaluate_checkpoint",
    "evaluate_network",
    "lr_at",
    "shard_indices",
    "train",
    "train_test_data",
]
