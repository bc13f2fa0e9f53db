"""The study's mechanism stage (examples/wide_deep/mechanism.py) against independent
float64 references: branch/stream norms by hand on one-block models, the probe against
scikit-learn, CKA after top-k PC removal against an SVD and the unbiased-HSIC formula, and
the dominant sets' Jaccard against enumeration; the per-model summary on planted inputs."""

import functools
import itertools
import math
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
xr = pytest.importorskip("xarray")

import repsim  # noqa: E402
from repsim.models import BasicBlock  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from wide_deep import analyse, mechanism  # noqa: E402

F = torch.nn.functional


def _bn(z, bn):
    """Eval-mode batch norm by its formula, float64."""
    shape = (1, -1, 1, 1)
    mean, var = bn.running_mean.double().view(shape), bn.running_var.double().view(shape)
    return (z - mean) / torch.sqrt(var + bn.eps) * bn.weight.double().view(shape) + bn.bias.double().view(shape)


def _randomise_bn(module, gen):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize("c_in, c_out, stride", [(3, 3, 1), (3, 6, 2)])
def test_branch_stream_ratio_and_gamma_of_a_one_block_model_by_hand(c_in, c_out, stride):
    gen = torch.Generator().manual_seed(0)
    block = BasicBlock(c_in, c_out, stride)
    _randomise_bn(block, gen)
    model = torch.nn.Sequential(OrderedDict(block=block))
    x = torch.randn(12, c_in, 6, 6, generator=gen)
    got = mechanism.forward_measures(model, ["block.relu1", "block"], x.numpy(), "cpu", batch=5)
    xd = x.double()
    with torch.no_grad():
        h = F.relu(_bn(F.conv2d(xd, block.conv1.weight.double(), stride=stride, padding=1), block.bn1))
        branch = _bn(F.conv2d(h, block.conv2.weight.double(), padding=1), block.bn2)
        if stride == 1:
            stream = xd
        else:
            stream = _bn(F.conv2d(xd, block.shortcut.conv.weight.double(), stride=stride), block.shortcut.bn)
    fn, sn = branch.flatten(1).norm(dim=1).numpy(), stream.flatten(1).norm(dim=1).numpy()
    assert got["blocks"] == ["block"] and got["projection"].tolist() == [stride != 1]
    np.testing.assert_allclose(got["branch"][0], fn, rtol=1e-5)
    np.testing.assert_allclose(got["stream"][0], sn, rtol=1e-5)
    np.testing.assert_allclose((got["branch"] / got["stream"]).mean(1)[0], np.mean(fn / sn), rtol=1e-5)
    assert got["gamma"][0] == pytest.approx(float(np.abs(block.bn2.weight.detach().numpy()).mean()))
    # the pooled outputs: spatial means of relu1 and of the block's output
    np.testing.assert_allclose(got["pooled"]["block.relu1"], h.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["pooled"]["block"], F.relu(branch + stream).mean(dim=(2, 3)).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert model.training  # the training flag is restored


def _ridge_reference(x_fit, y_fit, x_score, n_classes, ridge):
    """Predictions of the standardised ridge classifier in closed form (float64):
    ``W = (XᵀX + ridge I)⁻¹ Xᵀ(Y - mean Y)`` on one-hot targets, the class the argmax of
    ``X W + mean Y`` (RidgeClassifier's ±1 targets scale and shift the scores, not their
    argmax); a constant feature keeps scale 1."""
    mean, sd = x_fit.mean(0), x_fit.std(0)
    sd[sd == 0] = 1.0
    xf, xs = (x_fit - mean) / sd, (x_score - mean) / sd
    y = np.eye(n_classes)[y_fit]
    ym = y.mean(0)
    w = np.linalg.solve(xf.T @ xf + ridge * np.eye(xf.shape[1]), xf.T @ (y - ym))
    return (xf @ w + ym).argmax(1), (xs @ w + ym).argmax(1)


def test_ridge_probe_is_the_closed_form_ridge_classifier():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(1)
    n, p, c = 120, 9, 4
    y = rng.integers(0, c, n)
    x = rng.standard_normal((n, p)) + 0.8 * np.eye(c, p)[y] * 3
    x[:, 5] = 2.0  # a constant feature
    fit, score = mechanism.probe_split(n, 0.5, 0)
    assert len(fit) == 60 and not set(fit) & set(score) and len(set(fit) | set(score)) == n
    for ridge in (0.1, 10.0, 1000.0):
        ref_fit, ref_score = _ridge_reference(x[fit], y[fit], x[score], c, ridge)
        got_fit, got_score = mechanism.ridge_probe(x[fit], y[fit], x[score], y[score], ridge)
        assert got_score == pytest.approx(float(np.mean(ref_score == y[score])))
        assert got_fit == pytest.approx(float(np.mean(ref_fit == y[fit])))


def _unbiased_cka(a, b):
    """Unbiased-HSIC linear CKA (Song et al. 2012), float64, by its formula."""
    def hsic(k, l):
        n = len(k)
        k, l = k.copy(), l.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        one = np.ones(n)
        return (np.trace(k @ l) + one @ k @ one * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))

    k, l = a @ a.T, b @ b.T
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def _minus_top_pcs(z, k):
    c = z - z.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    return c - c @ vt[:k].T @ vt[:k]


def test_cka_after_top_k_pc_removal_against_an_svd_by_hand():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 8))
    x = np.random.default_rng(2).standard_normal((40, 6)).astype(np.float32)
    # one batch of all 40 images per pass: the minibatch estimate is the full-sample one
    cfg = {"cka_batch_size": 40, "passes": 2, "interval_groups": 2, "level": 0.9}
    names = ["0", "1", "2"]
    got = mechanism.pc_removed_cka(net, names, x, cfg, seed=0, device="cpu", ks=[1, 3, 5])
    assert sorted(got) == [0, 1, 3, 5]
    with torch.no_grad():
        h0 = net[0](torch.from_numpy(x))
        outs = [h0.double().numpy(), torch.tanh(h0).double().numpy(), net[2](torch.tanh(h0)).double().numpy()]
    for k in (0, 1, 3, 5):
        feats = [_minus_top_pcs(o, k) for o in outs]
        want = np.array([[_unbiased_cka(a, b) for b in feats] for a in feats])
        np.testing.assert_allclose(got[k]["cka"].values, want, atol=1e-6)
        assert got[k]["jackknife"].sizes["group"] == 2
        # and the library's per-batch transform through compare_models gives the same matrix
        ref = analyse.within_model_cka(net, names, x, cfg, seed=0, device="cpu",
                                       transform=functools.partial(repsim.remove_top_pcs, k=k))
        np.testing.assert_allclose(got[k]["cka"].values, ref["cka"].values, atol=2e-5)


def test_pc_removed_cka_batches_pair_every_k_and_drop_short_tails():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.ReLU(), torch.nn.Linear(12, 7))
    x = np.random.default_rng(4).standard_normal((43, 5)).astype(np.float32)  # batches 20, 20, 3 (dropped)
    cfg = {"cka_batch_size": 20, "passes": 3, "interval_groups": 4, "level": 0.9}
    got = mechanism.pc_removed_cka(net, ["0", "1", "2"], x, cfg, seed=3, device="cpu", ks=[2])
    assert got[0].attrs["n_batches"] == got[2].attrs["n_batches"] == 6 and got[0].attrs["n_examples"] == 120
    # the same seed gives the same batches: a rerun is identical
    again = mechanism.pc_removed_cka(net, ["0", "1", "2"], x, cfg, seed=3, device="cpu", ks=[2])
    np.testing.assert_array_equal(got[2]["cka"].values, again[2]["cka"].values)
    assert net.training


def test_jaccard_chance_against_enumeration():
    n, k = 7, 3
    subsets = list(itertools.combinations(range(n), k))
    inter = [len(set(a) & set(b)) for a in subsets for b in subsets]
    want_j = np.mean([i / (2 * k - i) for i in inter])
    got = mechanism.jaccard_chance(n, k)
    assert got["expected_intersection"] == pytest.approx(np.mean(inter)) == pytest.approx(k * k / n)
    assert got["expected_jaccard"] == pytest.approx(want_j)


def test_dominant_overlap_of_seed_pairs():
    def ext(removed, layer="l3"):
        return xr.Dataset(attrs={"dominant_removed": np.array(removed), "dominant_layer": layer, "n_examples": 20})

    models = [{"id": f"m{s}", "depth": 8, "width": 1, "train_fraction": 1.0, "seed": s, "block": {} if s < 2 else None}
              for s in range(3)] + [{"id": "other", "depth": 14, "width": 1, "train_fraction": 1.0, "seed": 0,
                                     "block": None}]
    extracts = {"m0": ext([1, 2, 3, 4]), "m1": ext([3, 4, 5, 6]), "m2": ext([7, 8, 9, 10]), "other": ext([1, 2, 3, 4])}
    rows = {(r["model_a"], r["model_b"]): r for r in mechanism.dominant_overlap(models, extracts)}
    assert set(rows) == {("m0", "m1"), ("m0", "m2"), ("m1", "m2")}  # seeds of one architecture only
    r = rows[("m0", "m1")]
    assert r["intersection"] == 2 and r["jaccard"] == pytest.approx(2 / 6, abs=1e-4) and r["both_block"]
    assert not rows[("m0", "m2")]["both_block"] and rows[("m0", "m2")]["jaccard"] == 0
    # P(I >= 2) for two random 4-subsets of 20: the hypergeometric tail by counting
    from math import comb
    want = sum(comb(4, i) * comb(16, 4 - i) for i in range(2, 5)) / comb(20, 4)
    assert r["p"] == pytest.approx(want, abs=1e-6) and r["expected_intersection"] == pytest.approx(0.8)


def test_span_is_the_block_else_the_window_with_two_layers_at_least():
    names = [f"l{i}" for i in range(10)]
    assert mechanism.span_of(names, (3, 6), [0.0, 0.2]) == (3, 6, "block")
    assert mechanism.span_of(names, None, [0.7, 0.9]) == (7, 8, "window")
    assert mechanism.span_of(names[:3], None, [0.6667, 1.0]) == (1, 2, "window")  # one layer, widened
    assert mechanism.span_of(names, None, None) is None
    assert mechanism.output_layer(["a.relu1", "a.relu2", "b"], "a") == 1
    assert mechanism.output_layer(["a.relu1", "a.relu2", "b"], "b") == 2
    assert mechanism.output_layer(["a.relu1"], "a") == -1


def _planted(L=12, f=6, l=9, inside=0.95, background=0.5, seed=0):
    rng = np.random.default_rng(seed)
    m = np.full((L, L), background) + rng.uniform(-0.01, 0.01, (L, L))
    m[f:l + 1, f:l + 1] = inside
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    return m


def _jack(m, groups=3):
    return np.stack([m] * groups)


def test_mechanism_summary_on_planted_inputs():
    L, f, l = 12, 6, 9
    names = [f"stage{1 + i // 4}.block{i % 4}" for i in range(L)]  # 'blocks' layers: one per residual block
    cfg = {"block_penalty": 0.25, "block_min_inside": 0.9, "block_min_contrast": 0.2, "block_min_size": 3,
           "block_min_share": 0.1, "block_neighbours": 3}
    plain = _planted()
    by_k = {1: _planted(inside=0.93), 2: _planted(inside=0.8), 3: _planted(inside=0.6)}  # dissolves at k = 2
    dims = ("layer_a", "layer_b")

    def run(key, m):
        return {key: (dims, m), f"{key}_jackknife": ((f"{key}_group",) + dims, _jack(m))}

    ext = xr.Dataset({**run("cka", plain)}, coords={"layer": names})
    acc = np.linspace(0.3, 0.9, L)
    acc[f:l + 1] = 0.8  # flat inside the span
    ratio = np.full(L, 1.0)
    ratio[f:l + 1] = 0.1
    ratio[8] = 0.0  # stage3.block0 (inside the span) is a projection block: left out
    projection = np.array([i % 4 == 0 and i > 0 for i in range(L)], dtype=np.int8)
    mech = xr.Dataset({**run("cka_pc0", plain), **run("cka_pc1", by_k[1]), **run("cka_pc2", by_k[2]),
                       **run("cka_pc3", by_k[3]),
                       "probe_accuracy": ("layer", acc), "branch_ratio": ("residual_block", ratio),
                       "bn2_gamma": ("residual_block", ratio * 2), "projection": ("residual_block", projection),
                       "output_layer": ("residual_block", np.arange(L)),
                       "control_random_contrast": ("removal", np.zeros(0))},
                      coords={"layer": names, "residual_block": names},
                      attrs={"pc_ks": [1, 2, 3], "probe_n_score": 100, "probe_n_fit": 100, "probe_ridge": 10.0,
                             "control_first": -1})
    block, _ = analyse.declared_block(plain, cfg)
    assert block == (f, l)
    entry = {"block": {"first": f, "last": l}}
    got = mechanism.mechanism_summary(entry, ext, mech, cfg)
    assert got["span"] == {"first": f, "last": l, "kind": "block"}
    assert got["pc_removal"][0]["k"] == 0 and got["pc_removal"][0]["contrast_change"] is None
    for row, k in zip(got["pc_removal"][1:], (1, 2, 3)):
        c = repsim.block_contrast(by_k[k], f, l, neighbours=3)
        assert row["k"] == k and row["inside"] == pytest.approx(c.inside, abs=1e-4)
        assert row["local_contrast"] == pytest.approx(c.contrast, abs=1e-4)
        assert row["passes"] == (c.inside >= 0.9 and c.contrast >= 0.2)
        want = c.contrast - repsim.block_contrast(plain, f, l, neighbours=3).contrast
        assert row["contrast_change"]["estimate"] == pytest.approx(want, abs=1e-4)
    assert [r["passes"] for r in got["pc_removal"]] == [True, True, False, False] and got["dissolves_at_k"] == 2
    res = got["residual"]
    assert res["branch_ratio_in"] == pytest.approx(0.1) and res["branch_ratio_out"] == pytest.approx(1.0)
    # the span's stages are 2 and 3: outside the span there, identity blocks 5 and 10, 11
    assert res["branch_ratio_out_same_stage"] == pytest.approx(1.0) and res["bn2_gamma_in"] == pytest.approx(0.2)
    p = got["probe"]
    assert p["gain_in"] == 0 and p["flat"] and p["gain_per_layer_in"] == 0
    steps = np.diff(acc)
    assert p["gain_per_layer_out"] == pytest.approx(np.mean(np.r_[steps[:f - 1], steps[l + 1:]]), abs=1e-4)
    assert p["se_difference"] == pytest.approx(math.sqrt(2 * 0.8 * 0.2 / 100), abs=1e-4)
    assert "dominant_control" not in got
