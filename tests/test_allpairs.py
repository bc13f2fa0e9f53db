"""The all-pairs paths of issue 22's done-when measures (cca, svcca, pwcca, rsa, mutual_knn,
procrustes_angular): each layer prepared once, the pair step small, and the matrix equal
to a per-pair loop of the public function (<= 1e-12 in float64). PWCCA in detail: its
weights come from the right side (``side="x"``, ``"y"``, ``"smaller"``, two sets of
layers of different widths) and agree with the covariance form of Morcos et al."""

import dataclasses
import functools

import numpy as np
import pytest

import repsim
from repsim import _registry as R

DONE_WHEN = ("cca", "svcca", "pwcca", "rsa", "mutual_knn", "procrustes_angular")


def _layers(seed, n, widths, prefix="layer"):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 4))
    return {f"{prefix}{i}": np.tanh(base @ rng.standard_normal((4, w)))
            + 0.3 * rng.standard_normal((n, w)) for i, w in enumerate(widths)}


def _pwcca_morcos(x, y):
    """Morcos et al. (2018), weighting x, written out in numpy: orthonormal bases of the
    centred column spaces by QR, canonical directions from the SVD of ``Q_x^T Q_y``,
    unit canonical variates ``h = Q_x a`` and ``alpha_i = sum_j |<h_i, x_j>|``."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    qx, qy = np.linalg.qr(xc)[0], np.linalg.qr(yc)[0]
    a, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    alpha = np.abs((qx @ a).T @ xc).sum(axis=1)
    return float(alpha @ rho / alpha.sum())


@pytest.mark.parametrize("side", ["x", "y", "smaller"])
def test_pwcca_matrix_equals_the_per_pair_loop_and_the_reference(side):
    xs = _layers(0, 120, [6, 9, 4])
    ys = _layers(1, 120, [5, 8], prefix="other")
    for a_side, b_side in ((xs, None), (xs, ys), (ys, xs)):
        sim = repsim.similarity_matrix(a_side, b_side, measure="pwcca", side=side,
                                       progress=False)
        b_side = a_side if b_side is None else b_side
        assert not sim.attrs["symmetric"]
        for i, (na, x) in enumerate(a_side.items()):
            for j, (nb, y) in enumerate(b_side.items()):
                value = float(sim.values[i, j])
                assert abs(value - float(repsim.pwcca(x, y, side=side))) <= 1e-12
                weighted = side if side != "smaller" else ("x" if x.shape[1] <= y.shape[1] else "y")
                ref = _pwcca_morcos(x, y) if weighted == "x" else _pwcca_morcos(y, x)
                assert value == pytest.approx(ref, abs=1e-10), (na, nb)
    # which side weights matters: x's weights and y's differ off the diagonal
    sx = repsim.similarity_matrix(xs, ys, measure="pwcca", side="x", progress=False).values
    sy = repsim.similarity_matrix(xs, ys, measure="pwcca", side="y", progress=False).values
    assert np.abs(sx - sy).max() > 1e-3
    swapped = repsim.similarity_matrix(ys, xs, measure="pwcca", side="y", progress=False).values
    np.testing.assert_allclose(sx, swapped.T, rtol=0, atol=1e-12)


def test_pwcca_svcca_convention_matrix_equals_the_per_pair_loop():
    xs = _layers(2, 150, [5, 7, 7, 9])
    sim = repsim.similarity_matrix(xs, measure="pwcca", convention="svcca", side="smaller",
                                   progress=False)
    for i, x in enumerate(xs.values()):
        for j, y in enumerate(xs.values()):
            expect = float(repsim.pwcca(x, y, convention="svcca", side="smaller"))
            assert abs(float(sim.values[i, j]) - expect) <= 1e-12
    with pytest.raises(ValueError, match="fewer features"):
        repsim.similarity_matrix(xs, measure="pwcca", convention="svcca", progress=False)


def test_pwcca_pair_step_touches_the_examples_once(monkeypatch):
    """Prepared layers carry their basis and ``U_r^T Z``: a pair costs one ``n r_x r_y``
    product (``U_x^T U_y``) and small ``r x r`` work, not three products over the ``n``
    examples (``U_x^T U_y``, ``h = U_x a``, ``h^T Z``) as a pair of bare bases did."""
    n = 90
    layers = _layers(3, n, [7, 5])
    family = repsim.measure("pwcca").family
    opts = repsim.measure("pwcca").bind({})
    la, lb = (family.prepare(v, k, **opts) for k, v in layers.items())
    xp = getattr(la, "rep", la).xp
    shapes: list = []
    real = xp.matmul

    def matmul(a, b):
        shapes.append((tuple(a.shape), tuple(b.shape)))
        return real(a, b)

    monkeypatch.setattr(xp, "matmul", matmul)
    for side in ("x", "y"):
        shapes.clear()
        value = float(family.pair(la, lb, **{**opts, "side": side}))
        over_examples = [s for s in shapes if n in s[0] + s[1]]
        assert over_examples == [((7, n), (n, 5))], shapes
        assert abs(value - float(repsim.pwcca(*layers.values(), side=side))) <= 1e-12


@pytest.mark.parametrize("name", DONE_WHEN)
def test_done_when_measures_prepare_each_layer_once(name, monkeypatch):
    """similarity_matrix prepares each layer once, computes a symmetric measure's half
    once, never calls the public (per-pair) function, and gives its values."""
    m = repsim.measure(name)
    fam = m.family
    counts = {"prepare": 0, "pair": 0}

    def prepare(*a, **k):
        counts["prepare"] += 1
        return fam.prepare(*a, **k)

    def pair(*a, **k):
        counts["pair"] += 1
        return fam.pair(*a, **k)

    @functools.wraps(fam.function)
    def function(*a, **k):
        raise AssertionError("the per-pair function was called")

    counted = dataclasses.replace(fam, function=function, prepare=prepare, pair=pair)
    monkeypatch.setitem(R._MEASURES, m.name, dataclasses.replace(m, family=counted))
    xs = _layers(4, 60, [5, 6, 4, 5])
    ys = _layers(5, 60, [3, 6], prefix="other")
    sim = repsim.similarity_matrix(xs, measure=name, progress=False)
    assert counts == {"prepare": 4, "pair": 10 if m.symmetric else 16}
    cross = repsim.similarity_matrix(xs, ys, measure=name, progress=False)
    assert counts == {"prepare": 10, "pair": (10 if m.symmetric else 16) + 8}
    for result, b_side in ((sim, xs), (cross, ys)):
        for i, x in enumerate(xs.values()):
            for j, y in enumerate(b_side.values()):
                assert abs(float(result.values[i, j]) - float(m(x, y))) <= 1e-12
