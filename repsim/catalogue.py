"""The table of measures: what each computes, what it is invariant to, how it scales.

The rows are the measure registry's declarations (:mod:`repsim._registry`; each measure
is declared once, beside its function). :func:`repsim.measures` returns them as a
``pandas.DataFrame``; the user guide renders the same rows (``docs/user_guide/measures.rst``,
checked against :func:`rst_table` by the tests), and ``tests/test_catalogue.py`` checks
every invariance claimed -- and that no unclaimed one holds -- on random data.
"""

from __future__ import annotations

from . import _registry as R
from ._registry import INVARIANCES, Measure


def __getattr__(name):
    if name == "MEASURES":  # every registered measure, in table order (derived, lazily)
        return tuple(R.all_measures())
    raise AttributeError(f"module 'repsim.catalogue' has no attribute {name!r}")


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
        ``p, q`` features, ``k`` neighbours), ``chance`` (the permutation chance level
        where it has a closed form, else "permutation null"), ``aliases`` (other names
        :func:`repsim.measure` accepts) and ``similarity_repository`` (the ids of the same
        measure in the similarity repository's naming grammar, Cloos et al. 2024).

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
    for m in R.all_measures():
        row = {"function": m.function, "options": dict(m.options), "definition": m.definition,
               "reference": m.reference, "kind": m.kind, "range": m.range}
        row.update({inv: inv in m.invariances for inv in INVARIANCES})
        row.update({"symmetric": m.symmetric, "streaming": m.streaming, "cost": m.cost,
                    "chance": m.chance, "aliases": ", ".join(m.aliases),
                    "similarity_repository": ", ".join(m.repository)})
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index(R.names(), name="measure"))


def _call(m):
    opts = ", ".join(f"{k}={v!r}" for k, v in m.options.items())
    return f"``{m.function}({opts})``" if opts else f"``{m.function}``"


def rst_table():
    """The catalogue as an RST ``list-table`` (the user guide's measure table)."""
    mark = {True: "yes", False: "--"}
    head = ["measure", "other names", "call", "definition", "kind", "range", "orth.", "iso. scale",
            "inv. linear", "transl.", "streams", "cost", "chance level", "reference"]
    lines = [".. list-table::", "   :header-rows: 1", "   :class: measure-table", ""]
    rows = [head]
    for m in R.all_measures():
        other = ", ".join(f"``{a}``" for a in (*m.aliases, *m.repository)) or "--"
        rows.append([m.name, other, _call(m), f"``{m.definition}``", m.kind, m.range]
                    + [mark[inv in m.invariances] for inv in INVARIANCES]
                    + [m.streaming, f"``{m.cost}``", m.chance, m.reference])
    for row in rows:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {cell}" for cell in row[1:]]
    return "\n".join(lines) + "\n"
