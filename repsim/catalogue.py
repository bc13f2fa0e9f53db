"""The table of measures: what each computes, what it is invariant to, how it scales.

:func:`repsim.measures` returns it as a ``pandas.DataFrame``; the user guide renders the
same rows (``docs/user_guide/measures.rst``, checked against :func:`rst_table` by the
tests), and ``tests/test_catalogue.py`` checks every invariance claimed here -- and that
no unclaimed one holds -- on random data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INVARIANCES = ("orthogonal", "isotropic_scaling", "invertible_linear", "translation")


@dataclass(frozen=True)
class Measure:
    name: str
    function: str
    options: dict = field(default_factory=dict)
    kind: str = "similarity"
    range: str = "[0, 1]"
    invariances: tuple = ()
    symmetric: bool = True
    streaming: str = "all examples"
    cost: str = ""
    definition: str = ""
    reference: str = ""
    chance: str = "permutation null"

    def __call__(self, x, y):
        import repsim

        return getattr(repsim, self.function)(x, y, **self.options)


_OIT = ("orthogonal", "isotropic_scaling", "translation")
_ALL = ("orthogonal", "isotropic_scaling", "invertible_linear", "translation")
_OI = ("orthogonal", "isotropic_scaling")
_GRAM = "O(n^2 (p + q))"
_MOM = "O(n (p + q)^2 + (p + q)^3)"

MEASURES = (
    Measure("cka_linear", "cka", {}, "similarity", "[0, 1]", _OIT, True,
            "exact from feature moments; minibatch U-statistic (MinibatchCKA)",
            "O(n min(n, p + q) (p + q))",
            "HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), linear grams, biased HSIC",
            "Kornblith et al. 2019", "closed form (permutation_test)"),
    Measure("cka_linear_unbiased", "cka", {"estimator": "unbiased"}, "similarity", "<= 1", _OIT,
            True, "minibatch U-statistic (MinibatchCKA); exact from moments", _GRAM,
            "CKA with the unbiased HSIC of Song et al. 2012", "Nguyen et al. 2021", "0 (exact)"),
    Measure("cka_rbf", "cka", {"kernel": "rbf"}, "similarity", "[0, 1]", _OIT, True,
            "minibatch U-statistic with a fixed bandwidth", _GRAM,
            "CKA with RBF grams, median-heuristic bandwidth", "Kornblith et al. 2019",
            "closed form (permutation_test)"),
    Measure("cca", "cca", {}, "similarity", "[0, 1]", _ALL, True, "exact from feature moments",
            _MOM, "mean canonical correlation of the centred column spaces",
            "Hotelling 1936; Raghu et al. 2017"),
    Measure("svcca", "svcca", {}, "similarity", "[0, 1]", _OIT, True,
            "all examples (SVD truncation)", _MOM,
            "mean CCA after keeping the top directions explaining 99% of variance",
            "Raghu et al. 2017"),
    Measure("pwcca", "pwcca", {}, "similarity", "[0, 1]", ("isotropic_scaling", "translation"),
            False, "exact from feature moments", _MOM,
            "canonical correlations weighted by the share of x's neurons each accounts for",
            "Morcos et al. 2018"),
    Measure("procrustes_angular", "shape_distance", {"alpha": 1.0}, "metric", "[0, pi/2]", _OIT,
            True, "exact from feature moments", _MOM,
            "arccos(||Xc^T Yc||_* / (||Xc||_F ||Yc||_F))", "Williams et al. 2021"),
    Measure("procrustes_euclidean", "shape_distance", {"alpha": 1.0, "score": "euclidean"},
            "metric", "[0, inf)", ("orthogonal", "translation"), True,
            "exact from feature moments", _MOM, "min_Q ||Xc Q - Yc||_F / sqrt(n)",
            "Williams et al. 2021"),
    Measure("shape_cca_angular", "shape_distance", {"alpha": 0.0}, "metric", "[0, pi/2]", _ALL,
            True, "exact from feature moments", _MOM,
            "angular shape distance of the whitened data: arccos(sum rho / sqrt(r_x r_y))",
            "Williams et al. 2021"),
    Measure("shape_half_angular", "shape_distance", {"alpha": 0.5}, "metric", "[0, pi/2]",
            ("orthogonal", "translation"), True, "exact from feature moments", _MOM,
            "angular shape distance after partial whitening alpha I + (1 - alpha) C^-1/2",
            "Williams et al. 2021"),
    Measure("nbs", "nbs", {}, "similarity", "[0, 1]", _OIT, True, "exact from feature moments",
            _MOM, "||Xc^T Yc||_* / sqrt(tr(Xc^T Xc) tr(Yc^T Yc))", "Harvey et al. 2023"),
    Measure("linear_r2", "ridge_r2", {}, "similarity", "[0, 1]", _OIT, False,
            "exact from feature moments (k-fold: per-fold sums)", _MOM,
            "pooled R² of the least-squares prediction of y from x",
            "Klabunde et al. 2023"),
    Measure("ridge_r2", "ridge_r2", {"ridge": 0.1}, "similarity", "[0, 1]",
            ("orthogonal", "translation"), False,
            "exact from feature moments (k-fold: per-fold sums)", _MOM,
            "pooled R² of the ridge prediction of y from x", "Klabunde et al. 2023"),
    Measure("gulp", "gulp", {"ridge": 0.01}, "distance", "[0, inf)", ("orthogonal", "translation"),
            True, "exact from feature moments", _MOM,
            "distance between the ridge predictors of linear targets from x and from y",
            "Boix-Adserà et al. 2022"),
    Measure("dcor", "dcor", {}, "similarity", "<= 1", _OIT, True,
            "minibatch U-statistic (distance kernel)", _GRAM,
            "bias-corrected squared distance correlation <U(A), U(B)> / sqrt(...)",
            "Székely & Rizzo 2014", "0 (exact)"),
    Measure("rsa", "rsa", {}, "similarity", "[-1, 1]", _OIT, True, "all examples",
            "O(n^2 (p + q))", "Pearson correlation of the Euclidean RDMs' upper triangles",
            "Kriegeskorte et al. 2008", "0 (exact)"),
    Measure("rsa_kendall", "rsa", {"rdm": "correlation", "compare": "kendall"}, "similarity",
            "[-1, 1]", ("isotropic_scaling",), True, "all examples", "O(n^2 (p + q + log n))",
            "Kendall tau-a of the correlation-distance RDMs", "Nili et al. 2014", "0 (exact)"),
    Measure("mutual_knn", "mutual_knn", {"k": 10}, "similarity", "[0, 1]", _OI, True,
            "all examples", "O(n^2 (p + q)); all pairs: O(n k^2) per pair",
            "mean_i |N_x(i) ∩ N_y(i)| / k (cosine neighbours)", "Huh et al. 2024",
            "k / (n - 1) (exact)"),
    Measure("jaccard_knn", "jaccard_knn", {"k": 10}, "similarity", "[0, 1]", _OI, True,
            "all examples", "O(n^2 (p + q)); all pairs: O(n k^2) per pair",
            "mean_i |N_x ∩ N_y| / |N_x ∪ N_y|", "Klabunde et al. 2025",
            "hypergeometric sum (exact)"),
    Measure("rank_similarity", "rank_similarity", {"k": 10}, "similarity", "[0, 1]", _OI, True,
            "all examples", "O(n^2 (p + q)); all pairs: O(n k^2) per pair",
            "rank agreement of the shared neighbours, normalised per example",
            "Wang et al. 2020; Klabunde et al. 2025"),
    Measure("second_order_cosine", "second_order_cosine", {"k": 10}, "similarity", "[-1, 1]", _OI,
            True, "all examples", "O(n^2 (p + q)); all pairs: O(n k (p + q)) per pair",
            "cosine of the similarity profiles over the union of neighbourhoods",
            "Hamilton et al. 2016"),
    Measure("cknna", "cknna", {"k": 10}, "similarity", "<= 1", _OI, False, "all examples",
            "O(n^2 (p + q))", "unbiased-HSIC CKA restricted to mutual k-NN pairs",
            "Huh et al. 2024"),
)


def measures():
    """The catalogue of repsim's measures, one row each.

    Returns
    -------
    pandas.DataFrame
        Indexed by measure name; columns ``function`` (the ``repsim`` function) and
        ``options`` (its keyword arguments for this row), ``definition``, ``reference``,
        ``kind`` (similarity, distance or metric), ``range``, one boolean column per
        invariance (``orthogonal``, ``isotropic_scaling``, ``invertible_linear``,
        ``translation``; "invariant" means the value does not change when either argument
        is transformed), ``symmetric``, ``streaming`` (exactly from feature moments, as a
        minibatch U-statistic, or needs all examples at once), ``cost`` (``n`` examples,
        ``p, q`` features, ``k`` neighbours) and ``chance`` (the permutation chance level
        where it has a closed form, else "permutation null").

    Examples
    --------
    >>> import repsim
    >>> table = repsim.measures()
    >>> bool(table.loc["procrustes_angular", "orthogonal"])
    True
    >>> table.loc["nbs", "function"]
    'nbs'
    """
    import pandas as pd

    rows = []
    for m in MEASURES:
        row = {"function": m.function, "options": dict(m.options), "definition": m.definition,
               "reference": m.reference, "kind": m.kind, "range": m.range}
        row.update({inv: inv in m.invariances for inv in INVARIANCES})
        row.update({"symmetric": m.symmetric, "streaming": m.streaming, "cost": m.cost,
                    "chance": m.chance})
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index([m.name for m in MEASURES], name="measure"))


def _call(m):
    opts = ", ".join(f"{k}={v!r}" for k, v in m.options.items())
    return f"``{m.function}({opts})``" if opts else f"``{m.function}``"


def rst_table():
    """The catalogue as an RST ``list-table`` (the user guide's measure table)."""
    mark = {True: "yes", False: "--"}
    head = ["measure", "call", "definition", "kind", "range", "orth.", "iso. scale",
            "inv. linear", "transl.", "streams", "cost", "chance level", "reference"]
    lines = [".. list-table::", "   :header-rows: 1", "   :class: measure-table", ""]
    rows = [head]
    for m in MEASURES:
        rows.append([m.name, _call(m), f"``{m.definition}``", m.kind, m.range]
                    + [mark[inv in m.invariances] for inv in INVARIANCES]
                    + [m.streaming, f"``{m.cost}``", m.chance, m.reference])
    for row in rows:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {cell}" for cell in row[1:]]
    return "\n".join(lines) + "\n"
