"""The moment measures under hostile input (issue 26 items 1 and 5).

Offsets far beyond the spread and scales of 1e-90 and 1e80: ``repsim.nbs``,
``shape_distance``, ``ridge_r2``, ``gulp`` and ``FeatureMoments.compute`` against float64
references written here on the well-conditioned data (every value is a function of the
centred data; where it depends on the scale -- a ridge, the partial whitening, the
Euclidean score -- the reference says how). FeatureMoments refuses an empty first batch,
corrupt or oversized states and duplicate layer names.
"""

import warnings

import numpy as np
import pytest

import repsim

N, P, Q = 1000, 64, 48


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, P))
    y = x[:, :Q] @ rng.standard_normal((Q, Q)) * 0.3 + rng.standard_normal((N, Q))
    return x, y


def _c(a):
    return a - a.mean(axis=0)


def _inv_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v / np.sqrt(w)) @ v.T


def _shape_ref(x, y, alpha, s):
    """Angular shape distance of ``(s x, s y)`` from the unscaled centred data: the
    partially whitened ``s Xc (alpha I + (1 - alpha) (s² S)^{-1/2})`` is
    ``Xc (alpha s I + (1 - alpha) S^{-1/2})``."""
    xc, yc = _c(x), _c(y)
    xa = xc @ (alpha * s * np.eye(P) + (1 - alpha) * _inv_sqrt(xc.T @ xc))
    ya = yc @ (alpha * s * np.eye(Q) + (1 - alpha) * _inv_sqrt(yc.T @ yc))
    nuc = np.linalg.svd(xa.T @ ya, compute_uv=False).sum()
    return np.arccos(min(nuc / (np.linalg.norm(xa) * np.linalg.norm(ya)), 1.0))


def _r2_ref(x, y, lam):
    xc, yc = _c(x), _c(y)
    b = np.linalg.solve(xc.T @ xc / N + lam * np.eye(P), xc.T @ yc / N)
    return 1 - np.sum((yc - xc @ b) ** 2) / np.sum(yc ** 2)


def _gulp_ref(x, y, lam):
    xc, yc = _c(x), _c(y)
    sx, sy, sxy = xc.T @ xc / N, yc.T @ yc / N, xc.T @ yc / N
    rx, ry = np.linalg.inv(sx + lam * np.eye(P)), np.linalg.inv(sy + lam * np.eye(Q))
    return np.sqrt(max(np.trace(rx @ sx @ rx @ sx) + np.trace(ry @ sy @ ry @ sy)
                       - 2 * np.trace(rx @ sxy @ ry @ sxy.T), 0.0))


def _cases(x, y, s):
    """(name, full-data call, compute() call, reference) for data scaled by ``s``."""
    xc, yc = _c(x), _c(y)
    nbs = np.linalg.svd(xc.T @ yc, compute_uv=False).sum() / np.sqrt(
        np.sum(xc ** 2) * np.sum(yc ** 2))
    euclid = s * np.sqrt(np.sum(xc ** 2) + np.sum(yc ** 2)
                         - 2 * np.linalg.svd(xc.T @ yc, compute_uv=False).sum())
    return [
        ("nbs", lambda a, b: repsim.nbs(a, b), ("nbs", {}), nbs),
        ("procrustes", lambda a, b: repsim.shape_distance(a, b), ("shape_distance", {}),
         np.arccos(nbs)),
        ("shape_cca", lambda a, b: repsim.shape_distance(a, b, 0.0),
         ("shape_distance", {"alpha": 0.0}), _shape_ref(x, y, 0.0, s)),
        ("shape_half", lambda a, b: repsim.shape_distance(a, b, 0.5),
         ("shape_distance", {"alpha": 0.5}), _shape_ref(x, y, 0.5, s)),
        ("euclidean", lambda a, b: repsim.shape_distance(a, b, score="euclidean"),
         ("shape_distance", {"score": "euclidean"}), euclid),  # in the data's units
        ("r2", lambda a, b: repsim.ridge_r2(a, b), ("linear_r2", {}), _r2_ref(x, y, 0.0)),
        # a ridge acts on the covariance: on (s x, s y) it is ridge / s² on (x, y)
        ("ridge_r2", lambda a, b: repsim.ridge_r2(a, b, 0.1), ("ridge_r2", {"ridge": 0.1}),
         _r2_ref(x, y, 0.1 / s ** 2)),
        ("gulp0", lambda a, b: repsim.gulp(a, b, 0.0), ("gulp", {"ridge": 0.0}),
         _gulp_ref(x, y, 0.0)),
        ("gulp", lambda a, b: repsim.gulp(a, b), ("gulp", {}), _gulp_ref(x, y, 0.01 / s ** 2)),
    ]


# (scale, offset): the issue's 1e4 + 1e-3 x, offsets of 1e4 std, and extreme scales
SETTINGS = [(1.0, 0.0), (1e-3, 1e4), (1.0, 1e4), (1e-90, 0.0), (1e-90, 1e-86), (1e80, 0.0),
            (1e80, 1e84)]


@pytest.mark.parametrize("scale, offset", SETTINGS)
def test_full_data_and_streamed_values_under_offsets_and_scales(scale, offset):
    x, y = _data()
    xs, ys = offset + scale * x, -offset + scale * y
    acc = repsim.FeatureMoments()
    for lo in range(0, N, 300):
        acc.update({"x": xs[lo:lo + 300]}, {"y": ys[lo:lo + 300]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no false "constant" warning, no RuntimeWarning
        for name, fn, (measure, params), ref in _cases(x, y, scale):
            full = float(fn(xs, ys))
            streamed = float(acc.compute(measure, **params).values[0, 0])
            tol = 1e-6 * (abs(ref) if name == "euclidean" else 1.0)
            assert abs(full - ref) < tol, (name, full, ref)
            assert abs(streamed - ref) < tol, (name, streamed, ref)


def test_the_issues_example_and_constant_layers_still_warn():
    x, y = _data()
    ref = float(repsim.nbs(x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert abs(float(repsim.nbs(1e4 + 1e-3 * x, 1e4 + 1e-3 * y)) - ref) < 1e-6
    # a constant layer at a large offset centres to exact zeros: NaN naming it
    for fn in (repsim.nbs, repsim.shape_distance, repsim.gulp, repsim.ridge_r2):
        with pytest.warns(repsim.DegenerateRepresentationWarning, match="'y'"):
            assert np.isnan(fn(x, np.full((N, 3), 1e4 + 0.1)))


def _feed(acc, acts, bounds=(0, 40, 90, 120)):
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        acc.update({k: v[lo:hi] for k, v in acts.items()})
    return acc


def _acts():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((120, 5))
    return {"a": a, "b": np.tanh(a[:, :3]) + 0.5 * rng.standard_normal((120, 3))}


def test_an_empty_first_batch_is_refused_and_a_later_one_changes_nothing():
    acts = _acts()
    acc = repsim.FeatureMoments()
    with pytest.raises(ValueError, match="first batch has no examples"):
        acc.update({k: v[:0] for k, v in acts.items()})
    assert not acc.started
    _feed(acc, acts)
    before = acc.compute("nbs").values
    acc.update({k: v[:0] for k, v in acts.items()})
    ac, bc = _c(acts["a"]), _c(acts["b"])
    ref = np.linalg.svd(ac.T @ bc, compute_uv=False).sum() / np.sqrt(
        np.sum(ac ** 2) * np.sum(bc ** 2))
    assert abs(float(acc.compute("nbs").values[0, 1]) - ref) < 1e-12
    np.testing.assert_array_equal(acc.compute("nbs").values, before)


@pytest.mark.parametrize("key, value, match", [
    ("zz", np.nan, "NaN or Inf"), ("sum_z", np.inf, "NaN or Inf"),
    ("n_batches", -3, "counts must be >= 0"), ("n", -1, "counts must be >= 0"),
    ("n_batches", 2.5, "dtype int64"),
])
def test_a_corrupt_state_is_refused_and_leaves_the_accumulator_as_it_was(key, value, match):
    acc = _feed(repsim.FeatureMoments(), _acts())
    before = acc.compute("cka").values
    state = acc.state_dict()
    if key == "n_batches":
        state[key] = np.asarray(value, dtype=np.int64 if value == -3 else np.float64)
    else:
        state[key] = state[key].copy()
        state[key].reshape(-1)[0] = value
    with pytest.raises(ValueError, match=match):
        acc.load_state_dict(state)
    np.testing.assert_array_equal(acc.compute("cka").values, before)


@pytest.mark.parametrize("cls", [repsim.FeatureMoments, repsim.MinibatchCKA])
def test_duplicate_layer_names_in_a_state_are_refused(cls):
    acc = cls()
    acts = _acts()
    acts["c"] = acts["a"] * 2
    for lo in (0, 40, 80):
        acc.update({k: v[lo:lo + 40] for k, v in acts.items()})
    state = acc.state_dict()
    state["names_a"] = ["a", "b", "a"]
    with pytest.raises(ValueError, match="names a layer twice"):
        cls().load_state_dict(state)


def test_merge_and_load_keep_to_max_bytes():
    big = _feed(repsim.FeatureMoments(max_bytes=None), {"a": _acts()["a"], "b": _acts()["b"],
                                                        "c": _acts()["b"][:, :2]})
    assert big.required_bytes(big.widths) == 8 * (13 * 13 + 13)
    small = repsim.FeatureMoments(max_bytes=1000)
    with pytest.raises(ValueError, match="max_bytes=1000"):
        small.merge(big)
    assert not small.started
    with pytest.raises(ValueError, match="max_bytes=1000"):
        small.load_state_dict(big.state_dict())
    assert not small.started


def test_a_measure_without_a_streaming_form_is_refused():
    acc = _feed(repsim.FeatureMoments(), _acts())
    with pytest.raises(ValueError, match="no exact streaming form"):
        acc.compute("cka_rbf")
    assert float(acc.compute("cka_linear").values[0, 1]) == pytest.approx(
        float(repsim.cka(_acts()["a"], _acts()["b"])), rel=1e-9)
