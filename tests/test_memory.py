"""The memory estimates made before a network is built: lower bounds of what the networks hold, so that a run that
fits is never refused, and refusals that give the estimate."""

from __future__ import annotations

import pytest
import torch

import mdarts_rs as md
from mdarts_rs.evaluate.network import count_params, eval_network
from mdarts_rs.memory import (
    SEARCH_ACTIVATIONS,
    NetworkTooLarge,
    _parameters,
    _values,
    available_bytes,
    check_fits,
    search_estimate,
    train_activations,
    train_estimate,
)
from mdarts_rs.search.supernet import SuperNet


@pytest.mark.parametrize(("C", "layers", "K", "size"), [(4, 5, 1, 32), (8, 8, 2, 32), (4, 6, 4, 64), (6, 7, 1, 16)])
def test_supernet_estimate_is_a_lower_bound_close_to_the_parameters(C, layers, K, size):
    net = SuperNet(C, 10, layers, partial_channels=K, image_size=size)
    held = sum(p.numel() for p in net.parameters())
    assert 0.8 * held <= search_estimate(C, layers, size, 10, 1, K).params <= held


@pytest.mark.parametrize("genotype", ["darts_v2", "pc_darts", "pdarts"])
@pytest.mark.parametrize(("C", "layers", "size"), [(8, 5, 32), (16, 8, 32), (4, 6, 64)])
def test_evaluation_network_estimate_is_a_lower_bound(genotype, C, layers, size):
    net = eval_network(md.load_genotype(genotype), "folder", C, layers, False, 0.0, 7, 3, size)
    assert train_estimate(C, layers, size, 7, 1, md.load_genotype(genotype)).params <= count_params(net)
    imagenet = eval_network(md.load_genotype(genotype), "imagenet", C, layers, False, 0.0, 7)
    assert _parameters(C, layers, 224, 7, None, C) <= count_params(imagenet)


def test_check_fits_refuses_with_the_estimate(monkeypatch):
    monkeypatch.setattr("mdarts_rs.memory.available_bytes", lambda device: 2**30)
    check_fits(search_estimate(16, 8, 32, 10, 1), torch.device("cpu"))  # a few hundred MiB: fits
    with pytest.raises(NetworkTooLarge, match=r"x.pt: the supernet \(C = 16, 8 cells, 64 images of 32×32 per step\) "):
        check_fits(search_estimate(16, 8, 32, 10, 64), torch.device("cpu"), "x.pt")
    monkeypatch.setattr("mdarts_rs.memory.available_bytes", lambda device: None)  # unknown: no refusal
    check_fits(search_estimate(1024, 8, 32, 10, 64), torch.device("cpu"))


def _kept_per_value(net: torch.nn.Module, C: int, layers: int, size: int, batch: int = 2) -> float:
    """Values the tensors saved for the backward pass of one training forward hold, per image and per value of the
    cells' outputs (what the activation estimates count)."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.randn(batch, 3, size, size, dtype=torch.float64))
    return sum(saved.values()) / 8 / batch / _values(C, layers, size)


_ONE_OP = "Genotype(normal=[{e}], normal_concat=[2, 3, 4, 5], reduce=[{e}], reduce_concat=[2, 3, 4, 5])"


@pytest.mark.parametrize(
    "genotype",
    ["darts_v1", "darts_v2", "pc_darts", "pdarts"]
    + [_ONE_OP.format(e=", ".join([f"('{op}', 0)", f"('{op}', 1)"] * 4)) for op in ("skip_connect", "avg_pool_3x3")],
)
@pytest.mark.parametrize(("C", "layers"), [(8, 5), (4, 8)])
def test_evaluation_network_activation_estimate_is_a_close_lower_bound(genotype, C, layers):
    g = md.load_genotype(genotype)
    net = eval_network(g, "folder", C, layers, False, 0.0, 7, 3, 32).double()
    kept = _kept_per_value(net, C, layers, 32)
    assert 0.6 * kept <= train_activations(g) <= kept


@pytest.mark.parametrize("supernet", ["batched", "plain"])
def test_supernet_activation_estimate_is_a_close_lower_bound(supernet):
    net = SuperNet(8, 10, 5, fast=supernet == "batched").double()
    kept = _kept_per_value(net, 8, 5, 32)
    assert 0.8 * kept <= SEARCH_ACTIVATIONS[supernet] <= kept


def test_available_memory_counts_the_address_space_limit(monkeypatch):
    # ulimit -v below what the process has mapped already: nothing is left for a network
    monkeypatch.setattr("mdarts_rs.memory.resource.getrlimit", lambda which: (2**20, 2**20))
    assert available_bytes(torch.device("cpu")) == 0
