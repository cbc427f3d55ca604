"""Evaluation networks: published parameter counts, MAC counting, per-level cells, drop-path."""

import pytest
import torch
from torch import nn

import mdarts_rs as md
from mdarts_rs.evaluate.network import EvalCell, count_macs, count_params, drop_path, eval_network

from published import ALL, DARTS_V2


def test_network_darts_v2_counts_match_darts_to_the_parameter():
    # DARTS' own training logs print "param size = 3.349342MB" (CIFAR-10) and 4.718752MB (ImageNet).
    g = md.Genotype.from_darts(DARTS_V2)
    assert count_params(eval_network(g, "cifar10")) == 3_349_342
    assert count_params(eval_network(g, "imagenet")) == 4_718_752


@pytest.mark.parametrize(
    ("name", "cifar_m", "imagenet_m"),
    [("DARTS_V2", 3.3, 4.7), ("PDARTS", 3.4, 4.9), ("PC_DARTS", 3.6, 5.3)],
)
def test_network_published_param_counts(name, cifar_m, imagenet_m):
    """Sizes as the DARTS, P-DARTS and PC-DARTS papers report them (millions, one decimal)."""
    g = md.Genotype.from_darts(ALL[name])
    assert round(count_params(eval_network(g, "cifar10")) / 1e6, 1) == cifar_m
    assert round(count_params(eval_network(g, "imagenet")) / 1e6, 1) == imagenet_m


def test_network_auxiliary_head_is_not_counted():
    g = md.Genotype.from_darts(ALL["DARTS_V1"])
    with_aux, without = eval_network(g, "cifar10", auxiliary=True), eval_network(g, "cifar10", auxiliary=False)
    assert count_params(with_aux) == count_params(without)
    assert sum(p.numel() for p in with_aux.parameters()) > count_params(with_aux)


def test_count_macs_of_a_small_network_by_hand():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # 8·8 out px · 8 ch · 3 in · 9 = 13,824
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),  # 4·4 · 8 · 1 · 9 = 1,152
        nn.Conv2d(8, 16, 1),  # 4·4 · 16 · 8 = 2,048
        nn.Flatten(),
        nn.Linear(256, 10),  # 2,560
    )
    assert count_macs(net, (3, 8, 8)) == 13_824 + 1_152 + 2_048 + 2_560


def test_count_macs_of_a_cell_network_by_hand():
    """3 cells (normal, reduce, reduce), C = 4, ops without MACs (skip, max pool): only the stem, the
    preprocessing convolutions and the classifier multiply."""
    g = md.Genotype(
        normal=[("skip_connect", 0), ("skip_connect", 1)] * 4, reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4
    )
    net = eval_network(g, "cifar10", C=4, layers=3, auxiliary=False)
    stem = 32 * 32 * 12 * 3 * 9
    cell0 = 2 * (32 * 32 * 4 * 12)  # two 1x1 ReLUConvBN 12 -> 4 at 32x32
    cell1 = 32 * 32 * 8 * 12 + 32 * 32 * 8 * 16  # 12 -> 8 and 16 -> 8 at 32x32
    cell2 = 2 * (16 * 16 * 8 * 16) + 16 * 16 * 16 * 32  # factorized reduce 16 -> 2x8, and 32 -> 16 at 16x16
    assert count_macs(net, (3, 32, 32)) == stem + cell0 + cell1 + cell2 + 64 * 10


def test_network_multilevel_cells_sit_at_their_levels():
    g = md.sample_genotype(7, "multilevel")
    assert len({str(c.edges) for c in g.cells.values()}) == 5
    net = eval_network(g, "cifar10", C=4, layers=8, auxiliary=True)
    layout = md.AlphaLayout("multilevel", 8)
    for cell, table, reduction in zip(net.cells, layout.cell_tables, layout.reduction):
        assert isinstance(cell, EvalCell)
        assert cell.genotype == g.cells[table] and cell.reduction == reduction
    net.train()
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux is not None and aux.shape == (2, 10)
    net.eval()
    assert net(torch.randn(2, 3, 32, 32))[1] is None


def test_network_darts_genotype_equals_its_multilevel_form():
    g = md.Genotype.from_darts(DARTS_V2)
    torch.manual_seed(0)
    a = eval_network(g, "cifar10", C=4, layers=8)
    torch.manual_seed(0)
    b = eval_network(g.to_multilevel(), "cifar10", C=4, layers=8)
    assert count_params(a) == count_params(b)
    x = torch.randn(2, 3, 32, 32)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x)[0], b(x)[0], rtol=0, atol=0)


def test_network_imagenet_shapes():
    g = md.Genotype.from_darts(DARTS_V2)
    net = eval_network(g, "imagenet", C=8, layers=5, num_classes=7)
    net.train()
    logits, aux = net(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 7) and aux.shape == (2, 7)


def test_drop_path_zeroes_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3)
    y = drop_path(x, 0.3)
    per_sample = y.flatten(1)
    values = per_sample.unique()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / 0.7)
    assert ((per_sample == 0).all(1) | (per_sample != 0).all(1)).all()
    assert y.mean().item() == pytest.approx(1.0, abs=0.05)
    assert drop_path(x, 0.0) is x


def test_eval_network_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="dataset must be"):
        eval_network(md.Genotype.from_darts(DARTS_V2), "mnist")


@pytest.mark.parametrize(("size", "convs", "side"), [(28, 0, 28), (32, 0, 32), (64, 1, 32), (96, 2, 24), (224, 3, 28)])
def test_network_stem_brings_inputs_to_cifar_scale(size, convs, side):
    from mdarts_rs.geometry import stem_plan
    from mdarts_rs.search.supernet import SuperNet

    assert stem_plan(size) == (convs, side)
    g = md.load_genotype("darts_v2")
    net = eval_network(g, "folder", C=4, layers=5, num_classes=3, in_channels=2, image_size=size).train()
    strided = [m for m in net.stem.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == convs and net.stem[0].in_channels == 2
    logits, aux = net(torch.zeros(2, 2, size, size))
    assert logits.shape == aux.shape == (2, 3)
    assert SuperNet(4, 3, 5, in_channels=2, image_size=size)(torch.zeros(2, 2, size, size)).shape == (2, 3)


def test_network_refuses_sizes_the_reductions_cannot_halve():
    with pytest.raises(ValueError, match=r"image_size 30 gives 30×30 features .* use e.g. 24, 28, 32"):
        eval_network(md.load_genotype("darts_v2"), "folder", num_classes=3, image_size=30)
    with pytest.raises(ValueError, match="needs num_classes"):
        eval_network(md.load_genotype("darts_v2"), "arrays")


def test_cli_info_shows_the_stem_of_each_size():
    from click.testing import CliRunner

    from mdarts_rs.cli import main

    r = CliRunner().invoke(main, ["info", "darts_v2", "--image-size", "64", "--image-size", "224", "--classes", "5"])
    assert r.exit_code == 0, r.output
    assert "stem: 1 stride-2 3x3 conv (64 -> 32)" in r.output and "stem: 3 stride-2 3x3 convs (224 -> 28)" in r.output
    assert "3x224x224, 5 classes" in r.output
    r = CliRunner().invoke(main, ["info", "darts_v2", "--image-size", "30"])
    assert r.exit_code == 2 and "multiple of 4" in r.output
