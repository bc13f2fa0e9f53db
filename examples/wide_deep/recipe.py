"""Recipe checks: a model trained with its own weight decay or number of steps, beside its
standard twin (same depth, width, seed and training fraction, the config's recipe).

A recipe check answers "does the block sharpen under another recipe, and does PC1 removal
then dissolve it?" (issue 24, section 4). It is one model, not a seed: the claims, the
seed aggregates and the cross-model pairs leave it out (:func:`wide_deep.config.standard`),
and the report compares it with its twin alone.
"""

from __future__ import annotations

from .config import is_recipe_check, recipe_text

#: C3's criterion, per model: removing PC1 lowers inside CKA by at least this much ...
DISSOLVE_INSIDE_DROP = 0.1
#: ... and local contrast by at least this share.
DISSOLVE_CONTRAST_SHARE = 0.5


def pc1_removal_dissolves(block) -> bool | None:
    """Whether removing PC1 dissolves ``block`` (C3's criterion: inside CKA falls by >= 0.1
    and local contrast by >= 50%); None without a block or its after-removal numbers."""
    if block is None or block.get("inside_after_pc1_removal") is None or \
            block.get("local_contrast_after_pc1_removal") is None or not block["local_contrast"]:
        return None
    drop = block["inside"] - block["inside_after_pc1_removal"]
    share = (block["local_contrast"] - block["local_contrast_after_pc1_removal"]) / block["local_contrast"]
    return bool(drop >= DISSOLVE_INSIDE_DROP and share >= DISSOLVE_CONTRAST_SHARE)


def twin_of(model, models):
    """The standard model of the same depth, width, seed and training fraction; None."""
    key = ("depth", "width", "seed", "train_fraction")
    return next((m for m in models if not is_recipe_check(m) and all(m[k] == model[k] for k in key)), None)


def _f(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def _cells(m) -> str:
    b = m["block"]
    fit = f"{m['train_accuracy']:.3f} ({'fits' if m['fits'] else '**not fitted**'})"
    steps = f"{m['steps']:,}" if m.get("steps") is not None else "n/a"
    if b is None:
        cand = m.get("candidate")
        best = "none" if cand is None else (f"none (best run {cand['first']}-{cand['last']}: inside "
                                            f"{_f(cand['inside'])}, local contrast {_f(cand['local_contrast'])})")
        return f"{steps} | {fit} | {_f(m['pc1_max'])} | {best} | — | — | — | — | —"
    dissolves = pc1_removal_dissolves(b)
    return (f"{steps} | {fit} | {_f(m['pc1_max'])} | {b['first']}-{b['last']} ({b['size']}/{m['n_layers']}) | "
            f"{_f(b['inside'])} | {_f(b['local_contrast'])} | {_f(b['pc1_in'])} / {_f(b['pc1_out'])} | "
            f"{_f(b['inside_after_pc1_removal'])} / {_f(b['local_contrast_after_pc1_removal'])} | "
            f"{'n/a' if dissolves is None else 'yes' if dissolves else 'no'}")


def _sentence(v, t) -> str:
    """One line: the check against its twin, in the rule's statistics."""
    def stat(m):
        best = m["block"] or m.get("candidate")
        return None if best is None else best["local_contrast"]

    head = f"{v['id']} ({recipe_text(v['recipe'])}) against {t['id']}: "
    parts = [f"train accuracy {v['train_accuracy']:.3f} vs {t['train_accuracy']:.3f}",
             f"block {'yes' if v['block'] else 'no'} vs {'yes' if t['block'] else 'no'}"]
    cv, ct = stat(v), stat(t)
    if cv is not None and ct is not None:
        word = "sharper" if cv > ct else "weaker" if cv < ct else "as sharp"
        parts.append(f"local contrast {cv:.3f} vs {ct:.3f} ({word}; the block's, or the sharpest run's without one)")
    parts.append(f"PC1 max {_f(v['pc1_max'])} vs {_f(t['pc1_max'])}")
    dv, dt = pc1_removal_dissolves(v["block"]), pc1_removal_dissolves(t["block"])
    if dv is not None or dt is not None:
        word = {True: "yes", False: "no", None: "no block"}
        parts.append(f"PC1 removal dissolves the block (C3's criterion): {word[dv]} vs {word[dt]}")
    return head + "; ".join(parts)


def recipe_section(summary) -> list[str]:
    """The report's lines on the run's recipe checks (none: no lines)."""
    checks = [m for m in summary["models"] if is_recipe_check(m)]
    if not checks:
        return []
    L = ["## Recipe checks\n",
         "Models trained with their own weight decay or number of steps (a sub-grid's recipe), each beside its "
         "standard twin: same depth, width, seed and training fraction. They are one model each, not seeds: the "
         "claims, the seed statistics and the cross-model pairs leave them out. Dissolves: removing PC1 lowers "
         f"inside CKA by >= {DISSOLVE_INSIDE_DROP} and local contrast by >= {DISSOLVE_CONTRAST_SHARE:.0%} (C3's "
         "criterion).\n",
         "| model | recipe | steps | train acc | PC1 max | declared block | inside | local contrast | PC1 in / out | "
         "after PC1 removal: inside / contrast | dissolves |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines = []
    for v in checks:
        t = twin_of(v, summary["models"])
        L.append(f"| {v['id']} | {recipe_text(v['recipe'])} | {_cells(v)} |")
        if t is None:
            lines.append(f"- {v['id']} ({recipe_text(v['recipe'])}): no standard twin in this run")
            continue
        L.append(f"| {t['id']} | standard twin | {_cells(t)} |")
        lines.append("- " + _sentence(v, t))
    return L + [""] + lines + [""]
