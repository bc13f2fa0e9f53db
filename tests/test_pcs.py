"""Principal components: variance fractions and removal against a textbook SVD/eigh, PC
removal inside MinibatchCKA, dominant examples and recomputing CKA without them."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import repsim
from repsim._validation import DegenerateRepresentationWarning

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _data(seed=0, n=200, p=12, scales=None):
    rng = np.random.default_rng(seed)
    scales = np.linspace(5, 0.5, p) if scales is None else np.asarray(scales)
    x = rng.standard_normal((n, p)) * scales
    return x @ np.linalg.qr(rng.standard_normal((p, p)))[0] + rng.standard_normal(p) * 10


def _planted_stack(seed=0, n=400, p=32, layers=10, block=(3, 7), n_dominant=8):
    """Layers drifting away from each other, plus a component carried by a few examples
    shared by the layers of ``block`` (inclusive)."""
    rng = np.random.default_rng(seed)
    t = 0.3 * rng.standard_normal(n)
    dominant = rng.choice(n, n_dominant, replace=False)
    t[dominant] = rng.choice([-1.0, 1.0], n_dominant) * 10
    h = rng.standard_normal((n, p))
    acts = {}
    for layer in range(layers):
        if layer:
            h = 0.85 * h + np.sqrt(1 - 0.85**2) * rng.standard_normal((n, p))
        x = h.copy()
        if block[0] <= layer <= block[1]:
            w = rng.standard_normal(p)
            x += 8.0 * np.outer(t, w / np.linalg.norm(w))
        acts[f"layer{layer}"] = x
    return acts, dominant


# --------------------------------------------------------------------------- variance


def test_pc_variance_fraction_matches_textbook_eigh():
    x = _data()
    cov = np.cov(x, rowvar=False)
    ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
    for k in (1, 2, 5, 12):
        frac = repsim.pc_variance_fraction(x, k=k)
        assert isinstance(frac, np.float64)
        assert frac == pytest.approx(ev[:k].sum() / ev.sum(), abs=1e-12)
    assert repsim.pc_variance_fraction(x, k=12) == pytest.approx(1.0, abs=1e-14)


def test_pc_variance_fraction_of_wide_data_and_conv_maps():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 3, 4, 5))  # n < features
    flat = x.reshape(20, -1)
    s = np.linalg.svd(flat - flat.mean(0), compute_uv=False)
    assert repsim.pc_variance_fraction(x, k=3) == pytest.approx((s[:3] ** 2).sum() / (s ** 2).sum())
    assert repsim.pc_variance_fraction(x, k=20) == pytest.approx(1.0)


def test_pc_variance_fraction_of_constant_is_nan_with_warning():
    with pytest.warns(DegenerateRepresentationWarning, match="constant"):
        assert np.isnan(repsim.pc_variance_fraction(np.full((10, 4), 7.0)))


# --------------------------------------------------------------------------- removal


def test_remove_top_pcs_matches_textbook_projection():
    x = _data(seed=2)
    xc = x - x.mean(0)
    w, v = np.linalg.eigh(xc.T @ xc)  # eigenvectors of the scatter matrix, ascending
    for k in (0, 1, 3, 12):
        vk = v[:, ::-1][:, :k]
        expected = xc - xc @ vk @ vk.T
        np.testing.assert_allclose(repsim.remove_top_pcs(x, k=k), expected, atol=1e-9)
    np.testing.assert_allclose(repsim.remove_top_pcs(x, k=12), 0.0, atol=1e-9)


def test_remove_top_pcs_keeps_shape_dtype_and_remaining_variance():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 2, 3, 4)).astype(np.float32)
    r = repsim.remove_top_pcs(x, k=2)
    assert r.shape == x.shape and r.dtype == np.float32
    flat = x.reshape(50, -1).astype(np.float64)
    s = np.linalg.svd(flat - flat.mean(0), compute_uv=False)
    assert np.sum(r.astype(np.float64) ** 2) == pytest.approx(np.sum(s[2:] ** 2), rel=1e-5)
    assert repsim.remove_top_pcs(np.arange(12).reshape(6, 2)).dtype == np.float64  # ints


@SETTINGS
@given(st.integers(2, 30), st.integers(1, 10), st.integers(0, 10), st.integers(0, 2**32 - 1))
def test_property_removal_is_orthogonal_to_the_removed_components(n, p, k, seed):
    k = min(k, n, p)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p)) * rng.uniform(0.1, 10, p)
    r = repsim.remove_top_pcs(x, k=k)
    xc = x - x.mean(0)
    _, s, vh = np.linalg.svd(xc, full_matrices=False)
    scale = max(1.0, s[0])
    np.testing.assert_allclose(r @ vh[:k].T, 0.0, atol=1e-9 * scale)
    assert np.sum(r**2) == pytest.approx(np.sum(s[k:] ** 2), abs=1e-9 * scale**2)
    fracs = [float(repsim.pc_variance_fraction(x, k=j)) for j in range(1, min(n, p) + 1)]
    assert np.all(np.diff(fracs) >= -1e-12) and 0 <= fracs[0] <= 1 + 1e-12


@pytest.mark.parametrize("shape", [(40, 500), (500, 40), (64, 64)])
def test_gram_route_matches_the_full_svd(shape):
    """The leading components come from the smaller gram's eigendecomposition: wide,
    tall and square data (rank-deficient: 6 directions) agree with a full SVD."""
    n, p = shape
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, 6)) * [9.0, 5.0, 3.0, 2.0, 1.0, 0.5] @ rng.standard_normal((6, p)) + 4.0
    xc = x - x.mean(0)
    u, s, vh = np.linalg.svd(xc, full_matrices=False)
    for k in (1, 3, 6, 8):
        assert float(repsim.pc_variance_fraction(x, k=k)) == pytest.approx(
            np.sum(s[:k] ** 2) / np.sum(s**2), rel=1e-12)
        expected = xc - (u[:, :k] * s[:k]) @ vh[:k]
        np.testing.assert_allclose(repsim.remove_top_pcs(x, k=k), expected, atol=1e-10 * s[0])
    dom = repsim.dominant_examples(x, top=5)
    np.testing.assert_allclose(np.abs(dom.scores), np.abs(u[:, 0] * s[0]), rtol=1e-10)
    assert dom.pc1_fraction == pytest.approx(s[0] ** 2 / np.sum(s**2), rel=1e-12)


@pytest.mark.parametrize("k", [-1, 1.0, True, "1", None, 13])
def test_bad_k(k):
    x = _data()
    with pytest.raises(ValueError, match="k must be an integer"):
        repsim.remove_top_pcs(x, k=k)
    if k != 0:
        with pytest.raises(ValueError, match="k must be an integer"):
            repsim.pc_variance_fraction(x, k=k)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 12\]"):
        repsim.pc_variance_fraction(x, k=0)


def test_bad_inputs():
    x = _data()
    x[4, 2] = np.nan
    for f in (repsim.remove_top_pcs, repsim.pc_variance_fraction, repsim.dominant_examples):
        with pytest.raises(ValueError, match="NaN or Inf"):
            f(x)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        repsim.remove_top_pcs(np.ones(5))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_torch_agreement(dtype):
    torch = pytest.importorskip("torch")
    x = _data(seed=4).astype(dtype)
    t = torch.from_numpy(x)
    r = repsim.remove_top_pcs(t, k=2)
    assert isinstance(r, torch.Tensor) and r.dtype == t.dtype and r.shape == t.shape
    np.testing.assert_allclose(r.numpy(), repsim.remove_top_pcs(x, k=2), atol=1e-5 if dtype == "float32" else 1e-12)
    f = repsim.pc_variance_fraction(t, k=2)
    assert isinstance(f, torch.Tensor) and f.dtype == torch.float64
    assert float(f) == pytest.approx(float(repsim.pc_variance_fraction(x, k=2)), abs=1e-12)
    d_t, d_n = repsim.dominant_examples(t, top=5), repsim.dominant_examples(x, top=5)
    assert d_t.indices.tolist() == d_n.indices.tolist()
    assert d_t.share == pytest.approx(d_n.share, abs=1e-12)


# --------------------------------------------------------------------------- in MinibatchCKA


def test_cka_after_removing_the_first_pc_is_one_accumulator():
    acts, _ = _planted_stack()
    block = [f"layer{i}" for i in range(3, 8)]
    plain = repsim.cka_matrix(acts)
    assert float(plain.sel(layer_a=block, layer_b=block).min()) > 0.9

    acc = repsim.MinibatchCKA(transform=functools.partial(repsim.remove_top_pcs, k=1))
    for start in range(0, 400, 100):
        acc.update({name: a[start:start + 100] for name, a in acts.items()})
    removed = acc.compute()
    # the same accumulator over batches transformed by hand
    ref = repsim.MinibatchCKA()
    for start in range(0, 400, 100):
        ref.update({name: repsim.remove_top_pcs(a[start:start + 100]) for name, a in acts.items()})
    np.testing.assert_allclose(removed.values, ref.compute().values, atol=1e-12)
    # the block dissolves: far-apart block layers are no longer alike
    assert float(removed.sel(layer_a="layer3", layer_b="layer7")) < 0.6
    assert repsim.block_score(plain) > 0.1
    assert repsim.block_score(removed) == 0.0


def test_transform_in_one_batch_equals_full_data_unbiased_cka():
    acts, _ = _planted_stack(n=120, layers=4, block=(1, 2))
    acc = repsim.MinibatchCKA(transform=functools.partial(repsim.remove_top_pcs, k=1))
    acc.update(acts)
    full = repsim.cka_matrix({k: repsim.remove_top_pcs(v) for k, v in acts.items()},
                             estimator="unbiased")
    np.testing.assert_allclose(acc.compute().values, full.values, atol=1e-10)


def test_transform_with_torch_batches():
    torch = pytest.importorskip("torch")
    acts, _ = _planted_stack(n=200, layers=4, block=(1, 2))
    for dtype in (torch.float32, torch.float64):
        acc = repsim.MinibatchCKA(transform=functools.partial(repsim.remove_top_pcs, k=1))
        ref = repsim.MinibatchCKA(transform=functools.partial(repsim.remove_top_pcs, k=1))
        for start in (0, 100):
            acc.update({k: torch.from_numpy(v[start:start + 100]).to(dtype) for k, v in acts.items()})
            ref.update({k: v[start:start + 100] for k, v in acts.items()})
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        np.testing.assert_allclose(acc.compute().values, ref.compute().values, atol=tol)


# --------------------------------------------------------------------------- dominant examples


def test_dominant_examples_finds_the_planted_examples():
    acts, dominant = _planted_stack()
    dom = repsim.dominant_examples(acts["layer5"], top=8)
    assert sorted(dom.indices.tolist()) == sorted(dominant.tolist())
    assert dom.indices.dtype == np.int64
    assert dom.share > 0.9 and dom.share > 10 * 8 / 400
    assert dom.pc1_fraction == pytest.approx(float(repsim.pc_variance_fraction(acts["layer5"])))
    assert dom.scores.shape == (400,) and dom.n == 400
    assert np.all(np.diff(np.abs(dom.scores[dom.indices])) <= 0)  # largest first
    assert dom.keep.sum() == 392 and not dom.keep[dominant].any()
    # share against the textbook PC1 projection
    x = acts["layer5"] - acts["layer5"].mean(0)
    pc1 = np.linalg.eigh(x.T @ x)[1][:, -1]
    t = x @ pc1
    np.testing.assert_allclose(np.abs(dom.scores), np.abs(t), atol=1e-8)
    assert dom.share == pytest.approx(np.sort(t**2)[::-1][:8].sum() / (t**2).sum())
    assert "share=" in repr(dom) and len(repr(dom)) < 200


def test_recomputing_cka_without_the_dominant_examples():
    acts, dominant = _planted_stack()
    dom = repsim.dominant_examples(acts["layer5"], top=8)
    kept = dom.exclude(acts)
    assert list(kept) == list(acts) and all(v.shape == (392, 32) for v in kept.values())
    by_hand = repsim.cka_matrix({k: np.delete(v, dominant, axis=0) for k, v in acts.items()})
    without = repsim.cka_matrix(kept)
    np.testing.assert_allclose(without.values, by_hand.values, atol=1e-12)
    assert repsim.block_score(repsim.cka_matrix(acts)) > 0.1
    assert repsim.block_score(without) == 0.0
    # sequences, tuples and single arrays; order of the kept rows is preserved
    lst = dom.exclude(list(acts.values()))
    assert isinstance(lst, list) and len(lst) == 10
    tup = dom.exclude(tuple(acts.values()))
    assert isinstance(tup, tuple)
    np.testing.assert_array_equal(dom.exclude(acts["layer0"]), acts["layer0"][dom.keep])


def test_exclude_works_on_torch_and_checks_n():
    torch = pytest.importorskip("torch")
    acts, _ = _planted_stack(n=100, layers=2, block=(0, 1), n_dominant=3)
    dom = repsim.dominant_examples(acts["layer1"], top=3)
    t = torch.from_numpy(acts["layer0"])
    out = dom.exclude(t)
    assert isinstance(out, torch.Tensor) and out.shape == (97, 32)
    np.testing.assert_array_equal(out.numpy(), acts["layer0"][dom.keep])
    with pytest.raises(ValueError, match="same n=100 examples"):
        dom.exclude(acts["layer0"][:50])
    with pytest.raises(ValueError, match=r"'layer0'.*same n=100"):
        dom.exclude({"layer0": acts["layer0"][:50]})


@pytest.mark.parametrize("top", [0, -2, 100, 2.0, True])
def test_dominant_examples_bad_top(top):
    with pytest.raises(ValueError, match="top must be an integer"):
        repsim.dominant_examples(_data(n=100), top=top)


def test_dominant_examples_of_constant_is_an_error():
    with pytest.raises(ValueError, match="constant"):
        repsim.dominant_examples(np.ones((20, 3)), top=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        repsim.dominant_examples(_data(n=20), top=19)


def test_docstring_examples_run():
    import doctest

    import repsim.pcs as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ pc_removed_grams


def _removed_gram(x, k):
    """The gram of x_c (I - V_k V_kᵀ) from an SVD written here (float64)."""
    c = np.asarray(x, np.float64) - np.mean(x, axis=0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    r = c - c @ vt[:k].T @ vt[:k]
    return r @ r.T


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 14), p=st.integers(1, 9), seed=st.integers(0, 2**16),
       ks=st.lists(st.integers(0, 16), min_size=1, max_size=4, unique=True))
def test_pc_removed_grams_are_the_grams_of_the_residuals(n, p, seed, ks):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p)) * rng.uniform(0.1, 10, p) + rng.uniform(-3, 3, p)
    got = repsim.pc_removed_grams(x @ x.T, ks)
    assert list(got) == ks
    scale = float(np.sum((x - x.mean(0)) ** 2))
    for k in ks:
        want = _removed_gram(x, min(k, n, p))  # beyond the rank: everything removed
        np.testing.assert_allclose(got[k], want, atol=1e-10 * scale)
        if k <= min(n, p):  # and the library's own residual agrees
            r = repsim.remove_top_pcs(x, k=k)
            np.testing.assert_allclose(got[k], r @ r.T, atol=1e-10 * scale)


def test_pc_removed_grams_torch_equals_numpy_and_rotations_change_nothing():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 12)) * np.linspace(6, 0.5, 12)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))  # an orthogonal map of the features
    a = repsim.pc_removed_grams(x @ x.T, [0, 1, 4])
    b = repsim.pc_removed_grams(torch.from_numpy(x @ q) @ torch.from_numpy(x @ q).T, [0, 1, 4])
    for k in (0, 1, 4):
        assert isinstance(b[k], torch.Tensor) and b[k].dtype == torch.float64
        np.testing.assert_allclose(b[k].numpy(), a[k], atol=1e-10)
    np.testing.assert_allclose(a[1], _removed_gram(x, 1), atol=1e-10)


def test_minibatch_cka_on_pc_removed_grams_equals_the_per_batch_transform():
    rng = np.random.default_rng(7)
    xs = {name: rng.standard_normal((64, p)) * np.linspace(4, 1, p) for name, p in
          (("a", 10), ("b", 16), ("c", 7))}
    by_grams = repsim.MinibatchCKA(estimator="unbiased")
    by_transform = repsim.MinibatchCKA(estimator="unbiased",
                                       transform=functools.partial(repsim.remove_top_pcs, k=2))
    for i in range(0, 64, 16):
        batch = {name: x[i:i + 16] for name, x in xs.items()}
        by_grams.update_grams({name: repsim.pc_removed_grams(x @ x.T, [2])[2]
                               for name, x in batch.items()})
        by_transform.update(batch)
    np.testing.assert_allclose(by_grams.compute().values, by_transform.compute().values,
                               atol=1e-12)


def test_pc_removed_grams_refuses_bad_input():
    g = np.eye(4)
    with pytest.raises(ValueError, match="square"):
        repsim.pc_removed_grams(np.ones((3, 4)), [1])
    with pytest.raises(ValueError, match="k must be an integer >= 0"):
        repsim.pc_removed_grams(g, [-1])
    with pytest.raises(ValueError, match="k must be an integer"):
        repsim.pc_removed_grams(g, [True])
    bad = g.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        repsim.pc_removed_grams(bad, [1])
