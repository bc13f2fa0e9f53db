"""Exact small-sample tests for the claims: seeds, and models, as the units.

With two or three seeds per architecture a test can only be as strong as the number of
ways the labels can be split allows: three seeds against three have 20 splits, so an exact
one-sided permutation p-value is at least 1/20 = 0.05; two against three have 10 (0.1).
Every function here returns that bound (``min_p``) beside its p-value, and
:func:`models_as_units` labels a test ``underpowered`` when the bound exceeds ``alpha``:
no outcome of such a design could pass it.

References
----------
Fisher, R. A. (1935). The Design of Experiments (the exact test of a 2 x 2 table, and the
permutation test over all relabellings).
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np

import repsim

#: Ties between a relabelling's statistic and the observed one are counted as ">="
#: within this tolerance (values come from JSON, rounded to 4 digits).
TOL = 1e-9


def fisher_presence(k_a, n_a, k_b, n_b) -> dict:
    """Exact one-sided Fisher test: is the block present more often in group a than b?

    Parameters
    ----------
    k_a, n_a : int
        Models of group a with a block, and models of group a.
    k_b, n_b : int
        The same for group b.

    Returns
    -------
    dict
        ``p`` (:func:`scipy.stats.fisher_exact`, ``alternative="greater"`` on the table
        ``[[k_a, n_a - k_a], [k_b, n_b - k_b]]``), ``min_p`` (``1 / C(n_a + n_b, n_a)``:
        the p-value of the most extreme table, every a with and no b without) and the table.
    """
    from scipy.stats import fisher_exact

    table = [[int(k_a), int(n_a - k_a)], [int(k_b), int(n_b - k_b)]]
    p = 1.0 if n_a == 0 or n_b == 0 else float(fisher_exact(table, alternative="greater").pvalue)
    return {"p": round(p, 4), "min_p": round(1.0 / math.comb(n_a + n_b, n_a), 4) if n_a and n_b else None,
            "table": table}


def _splits(n, k):
    """Every way of choosing which ``k`` of ``n`` units carry the first label."""
    return itertools.combinations(range(n), k)


def permutation_greater(a, b, two_sided=False) -> dict | None:
    """Exact one-sided permutation test of ``mean(a) > mean(b)`` over every split of the
    pooled values into groups of ``len(a)`` and ``len(b)`` (seeds as units); with
    ``two_sided``, of ``|mean(a) - mean(b)|``.

    Returns
    -------
    dict or None
        ``difference`` (``mean(a) - mean(b)``), ``p`` (share of splits whose difference is
        at least the observed one), ``n_splits`` and ``min_p`` (the share of splits reaching
        the largest difference: the smallest p any outcome of this design can give); None
        when a group is empty or a value is missing.
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b or not np.isfinite(a + b).all():
        return None
    pooled = np.asarray(a + b)
    diffs = []
    for idx in _splits(len(pooled), len(a)):
        mask = np.zeros(len(pooled), bool)
        mask[list(idx)] = True
        diffs.append(pooled[mask].mean() - pooled[~mask].mean())
    diffs = np.asarray(diffs)
    obs = float(np.mean(a) - np.mean(b))
    if two_sided:
        diffs, obs = np.abs(diffs), abs(obs)
    return {"difference": round(float(np.mean(a) - np.mean(b)), 4),
            "p": round(float(np.mean(diffs >= obs - TOL)), 4), "alternative": "two-sided" if two_sided else "greater",
            "n_splits": int(len(diffs)), "min_p": round(float(np.mean(diffs >= diffs.max() - TOL)), 4)}


def welch(a, b, level=0.9) -> dict | None:
    """Welch's t test of two groups of seeds (:func:`repsim.compare_seeds`), two-sided.

    With no spread on either side the t statistic is undefined (repsim's p is NaN there):
    the result then says ``undefined`` and carries no p-value or interval. None when a group has fewer than 2 finite values.
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) < 2 or len(b) < 2 or not np.isfinite(a + b).all():
        return None
    diff = float(np.mean(a) - np.mean(b))
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return {"difference": round(diff, 4), "ci": None, "p": None, "differs": None,
                "undefined": "no seed-to-seed spread on either side: Welch's t is undefined"}
    with warnings.catch_warnings():  # nearly equal seeds: scipy warns of cancellation, the value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        cmp = repsim.compare_seeds(a, b, level=level)
    return {"difference": round(diff, 4), "ci": [round(float(cmp["ci_low"]), 4), round(float(cmp["ci_high"]), 4)],
            "p": round(float(cmp["p_value"]), 4), "differs": bool(cmp["differs"])}


def _key(a, b):
    return frozenset((a, b))


def balanced_excess(disagree, wide, deep) -> float:
    """Mean cross-architecture disagreement minus the mean of the within-wide and the
    within-deep means (each architecture's seed pairs weigh the same, however many)."""
    cross = np.mean([disagree[_key(w, d)] for w in wide for d in deep])
    within = [np.mean([disagree[_key(x, y)] for x, y in itertools.combinations(g, 2)]) for g in (wide, deep)]
    return float(cross - 0.5 * (within[0] + within[1]))


def models_as_units(disagree, wide, deep, alpha=0.05) -> dict | None:
    """C5 with models as the units: do wide and deep models disagree more than seeds?

    Parameters
    ----------
    disagree : dict
        ``{frozenset({id_a, id_b}): share of test images the two models label differently}``
        for every pair of the models in ``wide`` and ``deep``.
    wide, deep : list of str
        Model ids of the two architectures (>= 2 each: each needs a seed pair).
    alpha : float
        Level of the one-sided test.

    Returns
    -------
    dict or None
        ``excess`` (:func:`balanced_excess`), its parts, ``p`` (exact: the share of the
        ``C(n_w + n_d, n_w)`` relabellings of the models with an excess at least the observed
        one), ``n_splits``, ``min_p`` and ``underpowered`` (``min_p > alpha``); None with
        fewer than 2 models on a side.
    """
    wide, deep = list(wide), list(deep)
    if len(wide) < 2 or len(deep) < 2:
        return None
    units = wide + deep
    obs = balanced_excess(disagree, wide, deep)
    stats = []
    for idx in _splits(len(units), len(wide)):
        w = [units[i] for i in idx]
        stats.append(balanced_excess(disagree, w, [u for u in units if u not in w]))
    stats = np.asarray(stats)
    min_p = float(np.mean(stats >= stats.max() - TOL))
    cross = [disagree[_key(w, d)] for w in wide for d in deep]
    return {
        "excess": round(obs, 4), "cross_mean": round(float(np.mean(cross)), 4),
        "within_wide": round(float(np.mean([disagree[_key(x, y)] for x, y in itertools.combinations(wide, 2)])), 4),
        "within_deep": round(float(np.mean([disagree[_key(x, y)] for x, y in itertools.combinations(deep, 2)])), 4),
        "p": round(float(np.mean(stats >= obs - TOL)), 4), "n_splits": int(len(stats)), "min_p": round(min_p, 4),
        "alpha": alpha, "underpowered": bool(min_p > alpha), "wide": wide, "deep": deep,
    }


def per_class_over_seeds(correct, y, classes, wide, deep) -> list[dict]:
    """Per-class accuracy of two architectures over seeds, with an exact two-sided
    permutation test over the seed labels per class and Holm's correction over classes.

    Parameters
    ----------
    correct : dict
        ``{model id: bool array (n_images,)}``, whether each model labels each image right.
    y : array of int, shape (n_images,)
    classes : list of str
    wide, deep : list of str
        Model ids of the two architectures.
    """
    from .summaries import holm

    wide, deep = list(wide), list(deep)
    units = wide + deep
    rows = []
    for c, name in enumerate(classes):
        sel = np.asarray(y) == c
        acc = np.asarray([float(np.mean(correct[u][sel])) for u in units])
        obs = acc[: len(wide)].mean() - acc[len(wide):].mean()
        diffs = []
        for idx in _splits(len(units), len(wide)):
            mask = np.zeros(len(units), bool)
            mask[list(idx)] = True
            diffs.append(acc[mask].mean() - acc[~mask].mean())
        p = float(np.mean(np.abs(diffs) >= abs(obs) - TOL))
        rows.append({"class": name, "n": int(sel.sum()), "accuracy_wide": round(float(acc[: len(wide)].mean()), 4),
                     "accuracy_deep": round(float(acc[len(wide):].mean()), 4), "difference": round(float(obs), 4),
                     "p": round(p, 4)})
    for row, adj in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = round(float(adj), 4)
    return rows


def relative_window(blocks) -> list[float] | None:
    """The relative depth ``[low, high)`` the blocks span: the union over
    ``(first, last, n_layers)`` of ``[first / n, (last + 1) / n)``; None without blocks."""
    blocks = list(blocks)
    if not blocks:
        return None
    return [round(min(f / n for f, _, n in blocks), 4), round(max((l + 1) / n for _, l, n in blocks), 4)]


def window_layers(window, n_layers) -> np.ndarray:
    """Layer positions of an ``n_layers``-layer model inside the relative window
    ``[low, high)`` (rounded to the nearest layer boundary)."""
    lo, hi = int(round(window[0] * n_layers)), int(round(window[1] * n_layers))
    return np.arange(max(0, lo), min(n_layers, max(hi, lo + 1)))


#: Up to this many points :func:`kendall_increasing` enumerates every ordering (9! =
#: 362,880); beyond it, a seeded Monte Carlo sample of :data:`MONTE_CARLO` orderings.
EXACT_MAX = 9
MONTE_CARLO = 100_000


def kendall_increasing(x, y) -> dict | None:
    """Does ``y`` rise with ``x``? Kendall's tau-b and its one-sided permutation p-value.

    Parameters
    ----------
    x : sequence of float, shape (n,)
        The ordered variable (e.g. depths, distinct).
    y : sequence of float, shape (n,)
        The response at each ``x`` (e.g. the mean relative block size over seeds); ties
        allowed (depths without a block all have size 0).

    Returns
    -------
    dict or None
        ``tau`` (:func:`scipy.stats.kendalltau`, tau-b; None when ``y`` is constant), ``p``
        (the share of orderings of ``y`` over ``x`` whose Kendall score ``S = sum_{i<j}
        sign(x_j - x_i) sign(y_j - y_i)`` is at least the observed one: tau-b is monotone in
        ``S`` at fixed ties, so this is the test of tau-b), ``min_p`` (the share reaching
        the largest ``S``: the smallest p this design can give), ``n_orderings`` and
        ``method`` ("exact": all ``n!`` orderings for ``n <= EXACT_MAX``; else "Monte
        Carlo" with ``MONTE_CARLO`` seeded orderings, p as ``(k + 1) / (N + 1)``); None with
        fewer than 3 points or a missing value.

    References
    ----------
    Kendall, M. G. (1938). A new measure of rank correlation. Biometrika 30, 81-93.
    """
    from scipy.stats import kendalltau

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < 3 or len(y) != n or not np.isfinite(np.r_[x, y]).all():
        return None
    i, j = np.triu_indices(n, 1)
    sx = np.sign(x[j] - x[i]).astype(np.int8)
    obs = int(np.sum(sx * np.sign(y[j] - y[i])))
    if n <= EXACT_MAX:
        orders = np.fromiter(itertools.chain.from_iterable(itertools.permutations(range(n))), dtype=np.int8)
        orders, method = orders.reshape(-1, n), "exact"
    else:
        rng = np.random.default_rng(0)
        orders, method = np.argsort(rng.random((MONTE_CARLO, n)), axis=1), "Monte Carlo"
    scores = np.zeros(len(orders), dtype=np.int32)
    for a, b, s in zip(i, j, sx):  # one pair at a time: memory n! integers, not n! x pairs
        scores += s * np.sign(y[orders[:, b]] - y[orders[:, a]]).astype(np.int32)
    k, top = int(np.sum(scores >= obs)), int(np.sum(scores >= scores.max()))
    p, min_p = (k / len(scores), top / len(scores)) if method == "exact" else (
        (k + 1) / (len(scores) + 1), (top + 1) / (len(scores) + 1))
    tau = None if np.ptp(y) == 0 else float(kendalltau(x, y).statistic)
    return {"tau": None if tau is None else round(tau, 4), "S": obs, "p": float(f"{p:.4g}"),
            "min_p": float(f"{min_p:.4g}"), "n_orderings": int(len(scores)), "method": method, "n": n}
