"""The search supernet: α tables, layouts, identical initialisation, parameter count, derived networks."""

import pytest
import torch

import mdarts_rs as md
from mdarts_rs.ops import softmax_entropy_ref
from mdarts_rs.primitives import count_params
from mdarts_rs.search.supernet import SuperNet, one_hot_weights


def tiny(mode="multilevel", seed=0, layers=5):
    return SuperNet(C=4, num_classes=10, layers=layers, alpha_mode=mode, seed=seed)


def test_supernet_alpha_tables_are_named_parameters():
    m = tiny()
    names = [n for n, _ in m.named_parameters() if "alpha" in n]
    assert names == [
        f"alphas.alpha_{t}" for t in ["normal_low", "reduce_low", "normal_mid", "reduce_mid", "normal_high"]
    ]
    assert all(p.shape == (14, 8) for p in m.arch_parameters())
    assert len(m.weight_parameters()) + 5 == len(list(m.parameters()))
    assert [n for n, _ in tiny("shared").named_parameters() if "alpha" in n] == [
        "alphas.alpha_normal",
        "alphas.alpha_reduce",
    ]


@pytest.mark.parametrize("mode", ["multilevel", "shared"])
def test_supernet_cells_read_their_layout_table(mode):
    m = SuperNet(C=4, layers=8, alpha_mode=mode)
    seen = []
    hooks = [c.register_forward_pre_hook(lambda mod, args: seen.append(args[2])) for c in m.cells]
    weights, _ = m.softmax_entropy()
    m(torch.randn(2, 3, 16, 16), weights)
    for h in hooks:
        h.remove()
    assert [next(t for t, w in weights.items() if w is p) for p in seen] == m.layout.cell_tables
    assert [c.reduction for c in m.cells] == m.layout.reduction


def test_supernet_layouts_start_identical():
    ml, sh = tiny("multilevel", seed=3), tiny("shared", seed=3)
    wm = {k: v for k, v in ml.state_dict().items() if "alpha" not in k}
    ws = {k: v for k, v in sh.state_dict().items() if "alpha" not in k}
    assert wm.keys() == ws.keys() and all(torch.equal(wm[k], ws[k]) for k in wm)
    for t in ml.layout.tables:
        ref = sh.alphas.table("reduce" if t.startswith("reduce") else "normal")
        assert torch.equal(ml.alphas.table(t), ref)
    assert 0 < sh.alphas.table("normal").std() < 2e-3  # 1e-3·N(0, 1)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(ml(x), sh(x), rtol=0, atol=0)
    assert not torch.equal(tiny("shared", seed=4).alphas.table("normal"), sh.alphas.table("normal"))


def test_supernet_param_count_matches_darts():
    # DARTS' search network at C = 16, 8 cells: 1.930618M weights (its published "param size").
    assert count_params(SuperNet(16, 10, 8, "multilevel")) == 1_930_618
    assert count_params(SuperNet(16, 10, 8, "shared")) == 1_930_618


def test_entropy_value_and_gradient_match_closed_form():
    torch.manual_seed(0)
    alpha = (torch.randn(14, 8, dtype=torch.float64) * 3).requires_grad_()
    p, h = softmax_entropy_ref(alpha)
    q = torch.softmax(alpha, -1)
    torch.testing.assert_close(p, q)
    torch.testing.assert_close(h, -(q * q.log()).sum(-1))
    (g,) = torch.autograd.grad(h.sum(), alpha)
    # d/dα_j (−Σ p ln p) = −p_j (ln p_j + h)
    torch.testing.assert_close(g, -q * (q.log() + h[:, None]))


def test_entropy_is_finite_for_extreme_alpha():
    alpha = torch.tensor([[1000.0, -1000.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    p, h = softmax_entropy_ref(alpha)
    assert torch.isfinite(p).all() and torch.isfinite(h).all()
    assert h[0].item() == pytest.approx(0.0, abs=1e-6)
    assert h[1].item() == pytest.approx(torch.log(torch.tensor(3.0)).item())
    (g,) = torch.autograd.grad(h.sum(), alpha)
    assert torch.isfinite(g).all()


def test_supernet_one_hot_weights_compute_the_derived_network():
    m = tiny(seed=1)
    g = m.genotype()
    assert isinstance(g, md.MultiLevelGenotype)
    w = one_hot_weights(g)
    assert all(float(t.sum()) == 8.0 for t in w.values())  # 2 kept edges × 4 nodes, one op each
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        dense, sparse = m(x, w), m(x, w, sparse=True)
    torch.testing.assert_close(dense, sparse, rtol=1e-5, atol=1e-6)


def test_supernet_genotype_follows_alpha():
    m = tiny("shared")
    with torch.no_grad():
        m.alphas.table("normal").zero_()
        m.alphas.table("normal")[:, md.PRIMITIVES.index("sep_conv_5x5")] = 5.0
    g = m.genotype()
    assert isinstance(g, md.Genotype)
    assert {op for op, _ in g.normal.edges} == {"sep_conv_5x5"}


def test_supernet_rejects_too_few_layers():
    with pytest.raises(md.SearchSpaceError):
        SuperNet(C=4, layers=4, alpha_mode="multilevel")


def test_package_exports_torch_parts_lazily():
    from mdarts_rs.evaluate.network import count_macs, eval_network
    from mdarts_rs.search import run_search

    assert md.SuperNet is SuperNet and md.count_params is count_params and md.run_search is run_search
    assert md.eval_network is eval_network and md.count_macs is count_macs
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        md.nope  # noqa: B018
