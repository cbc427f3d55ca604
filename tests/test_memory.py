"""The memory estimates made before a network is built: lower bounds of what the networks hold, so that a run that
fits is never refused, and refusals that give the estimate."""

from __future__ import annotations

import pytest
import torch

import mdarts_rs as md
from mdarts_rs.evaluate.network import count_params, eval_network
from mdarts_rs.memory import NetworkTooLarge, _parameters, check_fits, search_estimate, train_estimate
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
    assert train_estimate(C, layers, size, 7, 1).params <= count_params(net)
    imagenet = eval_network(md.load_genotype(genotype), "imagenet", C, layers, False, 0.0, 7)
    assert _parameters(C, layers, 224, 7, None, C) <= count_params(imagenet)


def test_check_fits_refuses_with_the_estimate(monkeypatch):
    monkeypatch.setattr("mdarts_rs.memory.available_bytes", lambda device: 2**30)
    check_fits(search_estimate(16, 8, 32, 10, 1), torch.device("cpu"))  # a few hundred MiB: fits
    with pytest.raises(NetworkTooLarge, match=r"x.pt: the supernet \(C = 16, 8 cells, 64 images of 32×32 per step\) "):
        check_fits(search_estimate(16, 8, 32, 10, 64), torch.device("cpu"), "x.pt")
    monkeypatch.setattr("mdarts_rs.memory.available_bytes", lambda device: None)  # unknown: no refusal
    check_fits(search_estimate(1024, 8, 32, 10, 64), torch.device("cpu"))
