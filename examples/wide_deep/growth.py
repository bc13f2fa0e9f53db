"""C1 on a depth curve: does the block grow with depth, or only appear?

With three depths a block at the last one only shows that it *emerges* (the wording of
:func:`wide_deep.claims._series_verdict`). With at least :data:`MIN_DEPTHS` depths that
each have a fitted seed, growth is tested: Kendall's tau of the mean relative block size
(0 without a block) against depth, the depths as units, with its exact one-sided
permutation p over every ordering of the depths (:func:`exact.kendall_increasing`; 720
orderings for 6 depths, so p >= 1/720). The same for the rule's local contrast (the
block's, or the sharpest run's without one: does the block sharpen?) is reported beside
it, not decisive. Verdicts:

- ``met`` (the block grows): p <= alpha, and among the depths with a block the size rises
  (at least two such depths, the deepest one's block larger than the shallowest one's);
- ``emerges`` (between X and Y): every depth with a block lies above every depth without
  one, X the deepest without and Y the shallowest with, and the block does not grow as above;
- ``not reached``: no depth has a block and the series' largest model has fewer
  parameters than the smallest model with a block in the run;
- ``not met``: otherwise.
"""

from __future__ import annotations

import numpy as np

from . import exact

#: Depths with a fitted seed a series needs for the growth test (fewer: the wording of
#: issue 24 for three points, ``emerges`` / ``not reached``).
MIN_DEPTHS = 4


def relative_size(m) -> float:
    """The declared block's share of the layers; 0 without a block."""
    return 0.0 if m["block"] is None else m["block"]["size"] / m["n_layers"]


def contrast(m):
    """The rule's local contrast: the block's, else the sharpest run's (None without either)."""
    best = m["block"] or m.get("candidate")
    return None if best is None else best["local_contrast"]


def _name(depth, width):
    return f"ResNet-{depth}" + ("" if width == 1 else f"x{width}")


def _kendall_text(what, k):
    if k is None:
        return f"{what}: fewer than 3 depths with a value"
    if k["tau"] is None:
        return f"{what}: the same at every depth (Kendall's tau undefined, p = 1)"
    how = (f"exact over all {k['n_orderings']:,} orderings of the depths" if k["method"] == "exact" else
           f"Monte Carlo over {k['n_orderings']:,} seeded orderings")
    return (f"{what}: Kendall's tau {k['tau']:.2f}, one-sided permutation p = {k['p']:.2g} ({how}; smallest "
            f"possible {k['min_p']:.2g})")


def depth_curve(models, block_params, alpha) -> dict:
    """The growth test of one depth series.

    Parameters
    ----------
    models : list of dict
        The fitted models of the series (one width, the main training fraction), summary
        entries: ``depth``, ``width``, ``block``, ``n_layers``, ``candidate``,
        ``n_parameters``.
    block_params : int or None
        Parameters of the smallest model with a block in the run (for ``not reached``).
    alpha : float
        Level of the one-sided test.

    Returns
    -------
    dict
        ``verdict``, ``text`` (one paragraph with every number), ``depths``, ``size`` and
        ``contrast`` (means per depth), ``kendall_size`` and ``kendall_contrast``.
    """
    depths = sorted({m["depth"] for m in models})
    width = models[0]["width"]
    at = {d: [m for m in models if m["depth"] == d] for d in depths}
    size = [float(np.mean([relative_size(m) for m in at[d]])) for d in depths]
    con = {d: [c for c in (contrast(m) for m in at[d]) if c is not None] for d in depths}
    con_depths = [d for d in depths if con[d]]
    con_mean = [float(np.mean(con[d])) for d in con_depths]
    k_size = exact.kendall_increasing(depths, size)
    k_con = exact.kendall_increasing(con_depths, con_mean)
    with_block = [(d, v) for d, v in zip(depths, size) if v > 0]
    free = [d for d, v in zip(depths, size) if v == 0]
    params = max((m.get("n_parameters") or 0) for m in models)
    rises = len(with_block) >= 2 and with_block[-1][1] > with_block[0][1]
    text = (f"growth tested over the {len(depths)} depths with a fitted seed ({', '.join(_name(d, width) for d in depths)}"
            f", seeds averaged at each depth): " + _kendall_text("relative block size", k_size) + "; "
            + _kendall_text("local contrast (the block's, or the sharpest run's)", k_con))
    if not with_block:
        if block_params is not None and params < block_params:
            verdict = "not reached"
            text += (f". No depth has a block, and the series' largest model stays below the smallest model with a "
                     f"block ({block_params / 1e6:.2f} M parameters): the curve stops before the block appears")
        else:
            verdict = "not met"
            text += ". No depth of the curve has a block"
    elif k_size is not None and k_size["p"] <= alpha and rises:
        verdict = "met"
        text += (f". The block grows with depth: larger in deeper models (p <= {alpha:g}) and larger at "
                 f"{_name(with_block[-1][0], width)} ({with_block[-1][1]:.2f}) than at "
                 f"{_name(with_block[0][0], width)} ({with_block[0][1]:.2f}), the shallowest depth with a block")
        if free and min(d for d, _ in with_block) > max(free):
            text += f"; it appears between {_name(max(free), width)} and {_name(with_block[0][0], width)}"
    elif free and min(d for d, _ in with_block) > max(free):
        verdict = "emerges"
        x, y = max(free), min(d for d, _ in with_block)
        text += (f". The block emerges between {_name(x, width)} and {_name(y, width)}: absent at every depth up to "
                 f"{x}, present from {y} on")
        sizes = ", ".join(f"{_name(d, width)}: {v:.2f}" for d, v in with_block)
        if len(with_block) < 2:
            text += "; growth needs two depths with a block, this curve has one"
        elif rises:
            text += f"; its size rises beyond it ({sizes}), but not significantly at {alpha:g}"
        else:
            text += f", without growing beyond it ({sizes})"
    else:
        verdict = "not met"
        text += ". The block does not grow with depth" + (
            "" if k_size is None or k_size["p"] > alpha else " (deeper models have larger blocks, but not among the "
                                                             "depths with a block)")
    return {"verdict": verdict, "text": text, "depths": depths, "size": [round(v, 4) for v in size],
            "contrast": dict(zip(con_depths, (round(v, 4) for v in con_mean))), "kendall_size": k_size,
            "kendall_contrast": k_con}
