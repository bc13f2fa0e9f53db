"""repsim._linalg: the shared preparation, SVD and rank rule of the CCA family and PCs."""

import warnings

import numpy as np
import pytest
import torch

from repsim._linalg import Rep, TopComponents, check_rtol, numerical_rank


def test_rep_centres_in_float64_and_keeps_the_input_eps(rng):
    x = (rng.standard_normal((50, 4)) + 1e4).astype(np.float32)
    rep = Rep(x)
    assert rep.data.dtype == np.float64 and rep.eps == np.finfo(np.float32).eps
    np.testing.assert_allclose(rep.data, x.astype(np.float64) - x.astype(np.float64).mean(0), atol=1e-9)
    assert rep.rank == 4
    # the floor bounds what centring in float64 can leave: far below the data's spread
    assert 0 < rep.floor < 1e-6


def test_rank_rule_relative_to_centred_data(rng):
    s = np.array([10.0, 1.0, 1e-9, 0.0])
    xp = __import__("array_api_compat").array_namespace(s)
    assert numerical_rank(s, 100, 4, 2.0 ** -52, None, 0.0, xp) == (3, 100 * 2.0 ** -52 * 10.0)
    assert numerical_rank(s, 100, 4, 2.0 ** -23, None, 0.0, xp)[0] == 2
    assert numerical_rank(s, 100, 4, 2.0 ** -52, None, 0.5, xp)[0] == 2  # the floor wins
    assert numerical_rank(s, 100, 4, 2.0 ** -52, 0.0, 0.0, xp)[0] == 3
    assert numerical_rank(s[:0], 100, 4, 2.0 ** -52, None, 0.0, xp) == (0, 0.0)
    with pytest.raises(ValueError, match="overflow float64"):
        numerical_rank(np.array([np.inf]), 3, 1, 2.0 ** -52, None, 0.0, xp)


def test_unit_columns_give_scale_free_bases(rng):
    z = rng.standard_normal((200, 5))
    x = z * np.logspace(-4, 4, 5)
    a, b = Rep(x, unit_columns=True), Rep(z, unit_columns=True)
    assert a.rank == b.rank == 5
    # the same column space
    np.testing.assert_allclose(np.abs(np.linalg.svd(a.u.T @ b.u, compute_uv=False)), 1.0, atol=1e-10)
    # unscaled float32: the 1e-4 and 1e-2 columns fall below max(n, p) * eps32 * s_1 (and says so)
    with pytest.warns(RuntimeWarning, match="direction"):
        assert Rep(x.astype(np.float32)).rank == 3  # 1e-4 and 1e-2 columns vs 1e4


def test_dropped_directions_warn(rng):
    low = (rng.standard_normal((100, 2)) @ rng.standard_normal((2, 6))).astype(np.float32)
    with pytest.warns(RuntimeWarning, match=r"x: 4 direction\(s\).*numerical rank 2, 6 in float64"):
        Rep(low)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Rep(low, rtol=0.0).rank == 6  # an explicit rtol: the caller decided
        assert Rep(low.astype(np.float64)).rank == 6


def test_top_components_match_svd(rng):
    for shape in ((30, 80), (80, 30)):
        x = rng.standard_normal(shape) * np.linspace(1, 3, shape[1]) + 7.0
        tc = TopComponents(x).decompose(3)
        c = x - x.mean(0)
        s = np.linalg.svd(c, compute_uv=False)
        np.testing.assert_allclose(tc.variances, s[:3] ** 2, rtol=1e-10)
        assert tc.total == pytest.approx(np.sum(s ** 2), rel=1e-12)
        assert not tc.constant
        res = tc.residual()
        np.testing.assert_allclose(np.linalg.svd(res, compute_uv=False)[: 3], s[3:6], rtol=1e-8)


def test_top_components_constant_at_any_offset():
    for value in (0.0, 1.0, 1e4, 3.3e7, 1e15):
        assert TopComponents(np.full((20, 3), value)).decompose(1).constant
    assert TopComponents(torch.full((20, 3), 1e4, dtype=torch.float32)).decompose(1).constant


def test_check_rtol():
    assert check_rtol(None) is None and check_rtol(0) == 0.0
    for bad in (1, -0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="rtol"):
            check_rtol(bad)
