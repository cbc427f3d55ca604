"""Fused mixed-op kernels: ``weighted_sum`` (the mixed op's Σ w_k·o_k) and ``softmax_entropy`` (p and the
per-edge entropy of α). The plain-torch references in ``_ref`` are their specification."""

from __future__ import annotations

from mdarts_rs.ops._ref import softmax_entropy_ref, weighted_sum_ref

weighted_sum = weighted_sum_ref
softmax_entropy = softmax_entropy_ref

__all__ = ["softmax_entropy", "softmax_entropy_ref", "weighted_sum", "weighted_sum_ref"]
