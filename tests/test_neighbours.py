"""Neighbourhood measures against brute-force float64 references of their definitions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import repsim
from repsim import neighbours as NB


def _knn_ref(x, k, metric="cosine"):
    """k nearest other rows, by a dense matrix and an explicit (key, index) sort."""
    n = x.shape[0]
    if metric == "cosine":
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        key = -(u @ u.T)
    else:
        xc = x - x.mean(axis=0)
        key = np.sum(xc * xc, axis=1)[None, :] - 2 * xc @ xc.T
    out = []
    for i in range(n):
        cand = sorted((key[i, j], j) for j in range(n) if j != i)
        out.append([j for _, j in cand[:k]])
    return out


def _refs(x, y, k, metric="cosine"):
    nx, ny = _knn_ref(x, k, metric), _knn_ref(y, k, metric)
    mutual, jac, rank = [], [], []
    for a, b in zip(nx, ny):
        s = set(a) & set(b)
        mutual.append(len(s) / k)
        jac.append(len(s) / len(set(a) | set(b)))
        v = sum(2 / ((1 + abs(a.index(j) - b.index(j))) * (a.index(j) + b.index(j) + 2)) for j in s)
        rank.append(v / sum(1 / t for t in range(1, len(s) + 1)) if s else 0.0)
    return np.mean(mutual), np.mean(jac), np.mean(rank), nx, ny


def _second_order_ref(x, y, k):
    ux = x / np.linalg.norm(x, axis=1, keepdims=True)
    uy = y / np.linalg.norm(y, axis=1, keepdims=True)
    nx, ny = _knn_ref(x, k), _knn_ref(y, k)
    vals = []
    for i in range(x.shape[0]):
        u = sorted(set(nx[i]) | set(ny[i]))
        sx = np.array([ux[i] @ ux[j] for j in u])
        sy = np.array([uy[i] @ uy[j] for j in u])
        vals.append(sx @ sy / np.sqrt((sx @ sx) * (sy @ sy)))
    return np.mean(vals)


def _cknna_ref(x, y, k):
    """Huh et al.'s reference code (platonic-rep metrics.cknna), in numpy float64."""
    ux = x / np.linalg.norm(x, axis=1, keepdims=True)
    uy = y / np.linalg.norm(y, axis=1, keepdims=True)
    K, L = ux @ ux.T, uy @ uy.T
    n = K.shape[0]

    def mask(G):
        m = np.zeros((n, n))
        for i, row in enumerate(_knn_from_gram(G, k)):
            m[i, row] = 1
        return m

    def hsic_u(A, B):
        A, B = A.copy(), B.copy()
        np.fill_diagonal(A, 0)
        np.fill_diagonal(B, 0)
        v = np.sum(A * B.T) + np.sum(A) * np.sum(B) / ((n - 1) * (n - 2)) - 2 * np.sum(A @ B) / (n - 2)
        return v / (n * (n - 3))

    def sim(G1, G2):
        m = mask(G1) * mask(G2)
        return hsic_u(m * G1, m * G2)

    return sim(K, L) / np.sqrt(sim(K, K) * sim(L, L))


def _knn_from_gram(G, k):
    n = G.shape[0]
    return [[j for _, j in sorted((-G[i, j], j) for j in range(n) if j != i)[:k]] for i in range(n)]


def _pair(rng, n=40, p=5, noise=0.7):
    x = rng.standard_normal((n, p))
    return x, x @ rng.standard_normal((p, p + 2)) + noise * rng.standard_normal((n, p + 2))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 4, 10])
def test_set_measures_match_brute_force(rng, metric, k):
    x, y = _pair(rng)
    mutual, jac, rank, _, _ = _refs(x, y, k, metric)
    assert abs(repsim.mutual_knn(x, y, k, metric=metric) - mutual) < 1e-12
    assert abs(repsim.jaccard_knn(x, y, k, metric=metric) - jac) < 1e-12
    assert abs(repsim.rank_similarity(x, y, k, metric=metric) - rank) < 1e-12


def test_second_order_cosine_and_cknna_match_their_references(rng):
    x, y = _pair(rng, n=35)
    assert abs(repsim.second_order_cosine(x, y, 6) - _second_order_ref(x, y, 6)) < 1e-9
    assert abs(repsim.cknna(x, y, 6) - _cknna_ref(x, y, 6)) < 1e-9


def test_ties_go_to_the_lower_example_index():
    # rows 1..4 are exact copies: every one is equally near row 0
    x = np.array([[1.0, 0.0], [2.0, 1.0], [2.0, 1.0], [2.0, 1.0], [2.0, 1.0], [-1.0, 3.0]])
    nb = NB.neighbours(x, 2, "cosine")
    assert nb.index[0].tolist() == [1, 2]
    assert nb.index[3].tolist() == [1, 2]  # its own copy (index 3) excluded, then lowest first
    nbe = NB.neighbours(x, 3, "euclidean")
    assert nbe.index[1].tolist() == [2, 3, 4]


def test_all_pairs_entry_equals_the_pair_functions(rng):
    x, y = _pair(rng, n=30)
    z = rng.standard_normal((30, 3))
    layers = {"x": x, "y": y, "z": z}
    for measure in NB._measures():
        sim = repsim.neighbour_matrix(layers, measure=measure, k=5)
        fn = getattr(repsim, measure)
        for a in layers:
            for b in layers:
                assert abs(sim.sel(layer_a=a, layer_b=b).item() - fn(layers[a], layers[b], k=5)) < 1e-12
        assert sim.attrs["measure"] == measure and sim.attrs["k"] == 5
    other = repsim.neighbour_matrix([x, y], [z], measure="jaccard_knn", k=4, metric="euclidean")
    assert other.shape == (2, 1)
    assert abs(other.values[1, 0] - repsim.jaccard_knn(y, z, 4, metric="euclidean")) < 1e-12


def test_numpy_and_torch_agree(rng):
    torch = pytest.importorskip("torch")
    x, y = _pair(rng, n=30)
    for measure in NB._measures():
        fn = getattr(repsim, measure)
        a, b = fn(x, y, k=4), fn(torch.tensor(x), torch.tensor(y), k=4)
        assert isinstance(b, torch.Tensor) and abs(float(a) - float(b)) < 1e-12


def test_bad_input(rng):
    x = rng.standard_normal((10, 3))
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 9\] \(at most n - 1 = 9"):
        repsim.mutual_knn(x, x, k=10)
    with pytest.raises(ValueError, match="metric must be one of"):
        repsim.mutual_knn(x, x, metric="manhattan")
    with pytest.raises(ValueError, match="metric must be 'cosine'"):
        repsim.neighbour_matrix([x], measure="cknna", metric="euclidean")
    z = x.copy()
    z[4] = 0
    with pytest.raises(ValueError, match=r"y has an all-zero row \(example 4\) of shape \(10, 3\)"):
        repsim.mutual_knn(x, z, k=3)
    with pytest.raises(ValueError, match=r"ys\['b'\] contains NaN"):
        repsim.neighbour_matrix({"a": x}, {"b": np.where(x > 1, np.nan, x)}, k=3)
    with pytest.raises(ValueError, match="same number of examples"):
        repsim.neighbour_matrix({"a": x, "b": x[:8]}, k=3)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(8, 30), st.integers(1, 6))
def test_ranges_symmetry_and_orthogonal_invariance(seed, n, k):
    rng = np.random.default_rng(seed)
    k = min(k, n - 1)
    x, y = rng.standard_normal((n, 4)), rng.standard_normal((n, 3))
    q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    for measure in ("mutual_knn", "jaccard_knn", "rank_similarity"):
        fn = getattr(repsim, measure)
        v = fn(x, y, k)
        assert 0 <= v <= 1
        assert abs(v - fn(y, x, k)) < 1e-12  # summation order only
    # an orthogonal map can perturb the keys' rounding; neighbour sets of generic data stay
    assert repsim.mutual_knn(x @ q * 3.0, y, k) == repsim.mutual_knn(x, y, k)


# ---------------------------------------------------------------- degenerate neighbourhoods
def _undefined_with_warning(fn, *args, layer="x", **kw):
    """The call returns NaN with a DegenerateRepresentationWarning naming ``layer`` and no
    other warning (a numpy RuntimeWarning is a failure)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn(*args, **kw)
    kinds = [type(w.message) for w in caught]
    assert kinds == [repsim.DegenerateRepresentationWarning], [str(w.message) for w in caught]
    msg = str(caught[0].message)
    assert "undefined (set to NaN)" in msg and f"{layer!r}" in msg and "ties" in msg, msg
    assert np.isnan(float(value))
    return msg


@pytest.mark.parametrize("measure", NB._measures())
def test_constant_layer_is_nan_with_a_warning_not_one(rng, measure):
    # before: 1.0 (0.9999 for second-order cosine) from the index-order tie-break
    c = np.full((20, 4), 3.0)
    fn = getattr(repsim, measure)
    msg = _undefined_with_warning(fn, c, c, k=3)
    assert "20 example(s)" in msg
    _undefined_with_warning(fn, rng.standard_normal((20, 4)), c, k=3, layer="y")
    if measure not in ("second_order_cosine", "cknna"):
        _undefined_with_warning(fn, c, c, k=3, metric="euclidean")
        _undefined_with_warning(fn, c + 1e-30, rng.standard_normal((20, 4)), k=19,
                                metric="euclidean")


@pytest.mark.parametrize("measure", NB._measures())
def test_one_hot_rows_are_nan_with_a_warning(rng, measure):
    # before: second-order cosine and CKNNA gave NaN with only numpy's "invalid value"
    # warning, the set measures a number decided by the index order
    y = rng.standard_normal((20, 5))
    _undefined_with_warning(getattr(repsim, measure), np.eye(20), y, k=3)
    _undefined_with_warning(getattr(repsim, measure), y, np.eye(20)[:, ::-1], k=5, layer="y")


def test_neighbour_matrix_names_the_tied_layers(rng):
    layers = {"ok": rng.standard_normal((15, 3)), "dead": np.zeros((15, 3)) + 1.0,
              "hot": np.eye(15), "ok2": rng.standard_normal((15, 4))}
    for measure in NB._measures():
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sim = repsim.neighbour_matrix(layers, measure=measure, k=4)
        assert [type(w.message) for w in caught] == [repsim.DegenerateRepresentationWarning]
        msg = str(caught[0].message)
        assert "'dead'" in msg and "'hot'" in msg and "'ok'" not in msg
        v = sim.values
        assert np.isnan(v[1]).all() and np.isnan(v[:, 2]).all()
        assert np.isfinite(v[np.ix_([0, 3], [0, 3])]).all()
        assert v[0, 3] == pytest.approx(float(getattr(repsim, measure)(layers["ok"], layers["ok2"], k=4)), abs=1e-12)


def test_partial_ties_keep_the_documented_tie_break():
    # a tie at the k-th place (not all of the neighbourhood) stays defined: lower index
    x = np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 1.0], [0.0, 1.0], [-1.0, -3.0], [3.0, -1.0]])
    nb = NB.neighbours(x, 2, "cosine")
    assert nb.tied == 0
    assert nb.index[1].tolist() == [0, 5]
    assert float(repsim.mutual_knn(x, x, k=2)) == 1.0
    assert NB.neighbours(np.eye(6), 2, "cosine").tied == 6
    line = np.array([0.0, 1.0, 3.0, 7.0])[:, None] * [1.0, 2.0]
    assert NB.neighbours(line, 1, "euclidean").tied == 0
    # evenly spaced: the inner points' two neighbours are equally near, for k = 1
    assert NB.neighbours(np.arange(4.0)[:, None] * [1.0, 2.0], 1, "euclidean").tied == 2
    assert NB.neighbours(line[:2], 1, "euclidean").tied == 0  # n = 2: one candidate


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(5, 25), st.integers(2, 5),
       st.sampled_from(["cosine", "euclidean"]))
def test_property_duplicated_examples(seed, n, p, metric):
    """Every example twice: with k = 1 each example's neighbour is its copy (distance
    exactly 0 / cosine of identical rows), so the set measures are exactly 1 for any
    pair of such layers; with k = 3 the copy is strictly nearest, so nothing is tied
    entirely and the values match the brute-force reference."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, p)), rng.standard_normal((n, p + 1))
    xd, yd = np.repeat(x, 2, axis=0), np.repeat(y, 2, axis=0)
    assert NB.neighbours(xd, 1, metric).tied == 0
    for measure in ("mutual_knn", "jaccard_knn", "rank_similarity"):
        assert float(getattr(repsim, measure)(xd, yd, k=1, metric=metric)) == 1.0
    mutual, jac, rank, _, _ = _refs(xd, yd, 3, metric)
    assert NB.neighbours(xd, 3, metric).tied == 0
    assert abs(float(repsim.mutual_knn(xd, yd, 3, metric=metric)) - mutual) < 1e-12
    assert abs(float(repsim.jaccard_knn(xd, yd, 3, metric=metric)) - jac) < 1e-12
    assert abs(float(repsim.rank_similarity(xd, yd, 3, metric=metric)) - rank) < 1e-12


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(6, 25), st.integers(1, 4),
       st.floats(-1e4, 1e4), st.integers(1, 3))
def test_property_constant_columns(seed, n, k, value, extra):
    """Constant columns carry no information: with the Euclidean metric (centred) the
    values are those without them; a layer made only of constant columns is NaN with a
    warning naming it."""
    rng = np.random.default_rng(seed)
    k = min(k, n - 1)
    x, y = rng.standard_normal((n, 3)), rng.standard_normal((n, 2))
    xc = np.hstack([x, np.full((n, extra), value)])
    for measure in ("mutual_knn", "jaccard_knn", "rank_similarity"):
        fn = getattr(repsim, measure)
        assert abs(float(fn(xc, y, k, metric="euclidean")) - float(fn(x, y, k, metric="euclidean"))) < 1e-12
        _undefined_with_warning(fn, np.full((n, extra), value), y, k=k, metric="euclidean")
    for measure in NB._measures():
        if value != 0:
            _undefined_with_warning(getattr(repsim, measure), x, np.full((n, extra), value), k=k,
                                    layer="y")
