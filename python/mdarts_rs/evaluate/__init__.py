"""Evaluation: the networks a genotype describes (``network``), their training (``trainer``, on the data of
``inputs``) and testing (``testing``), and using a trained one (``trained``: load, export, predict)."""

from mdarts_rs.evaluate.inputs import CifarData, shard_indices, train_test_data
from mdarts_rs.evaluate.testing import evaluate_checkpoint, evaluate_network, test_checkpoint
from mdarts_rs.evaluate.trainer import Trainer, build_trainer, lr_at, train, train_seeds

__all__ = [
    "CifarData",
    "Trainer",
    "build_trainer",
    "evaluate_checkpoint",
    "evaluate_network",
    "lr_at",
    "shard_indices",
    "test_checkpoint",
    "train",
    "train_seeds",
    "train_test_data",
]
