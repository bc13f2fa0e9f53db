"""Numbers of ``summary.json``: per model, per seed pair, per architecture pair, outputs, seeds.

Intervals named ``ci`` beside a CKA statistic are 90% delete-a-group jackknife intervals
over batch groups (``repsim.jackknife_interval``): measurement noise on the fixed held-out
images. Training randomness is measured over seeds (``repsim.aggregate_seeds``,
``repsim.compare_seeds``).
"""

from __future__ import annotations

import math

import numpy as np

import repsim

from . import exact
from .analyse import block_options, declared_block, jackknife_view, main_fraction
from .config import standard


def finite(v, digits=4):
    """``round(v)`` or None when missing or not finite (JSON has no NaN)."""
    return None if v is None or not np.isfinite(v) else round(float(v), digits)


def interval(results, statistic) -> dict | None:
    """``{"estimate", "ci", "stderr", "level"}`` of ``statistic`` (jackknife, paired across
    ``results``); None when not finite."""
    iv = repsim.jackknife_interval(results, statistic)
    if not np.isfinite(iv.estimate):
        return None
    return {"estimate": finite(iv.estimate), "ci": [finite(iv.ci_low), finite(iv.ci_high)],
            "stderr": finite(iv.stderr), "level": iv.level}


def mean_abs_cos(scores) -> float:
    """Mean ``|cos|`` between the PC1 score vectors (rows of ``scores``) of distinct layers."""
    s = np.asarray(scores, dtype=np.float64)
    s = s / np.linalg.norm(s, axis=1, keepdims=True)
    c = np.abs(s @ s.T)
    m = len(c)
    return float((c.sum() - np.trace(c)) / (m * (m - 1))) if m > 1 else math.nan


def model_summary(spec, meta, ds, cfg) -> dict:
    """The per-model entry of ``summary.json``: fit, the declared block and its measures."""
    names = [str(n) for n in ds["layer"].values]
    sim = ds["cka"].values
    pc1 = ds["pc1_share"].values
    block, found = declared_block(sim, cfg)
    opts = block_options(cfg, len(names))
    sens = repsim.block_sensitivity(
        sim, penalties=[opts["penalty"] * f for f in (0.5, 1, 2)],
        min_insides=[cfg["block_min_inside"] + d for d in (-0.05, 0, 0.05)],
        min_contrasts=[cfg["block_min_contrast"] + d for d in (-0.1, 0, 0.1)],
        min_size=opts["min_size"], min_share=opts["min_share"], neighbours=opts["neighbours"])
    stage = repsim.block_structure(sim)
    entry = {
        "id": spec["id"], "depth": spec["depth"], "width": spec["width"], "seed": spec["seed"],
        "train_fraction": spec["train_fraction"], "n_train": meta["n_train"], "steps": meta["steps"],
        "train_seconds": meta["train_seconds"], "train_accuracy": round(meta["train_accuracy"], 4),
        "test_accuracy": round(meta["test_accuracy"], 4), "fits": meta["train_accuracy"] >= cfg["fit_threshold"],
        "n_parameters": meta["n_parameters"], "n_layers": len(names), "pc1_max": finite(np.nanmax(pc1)),
        "block": None, "pc1_runs": [{"first_layer": names[f], "last_layer": names[l], "first": f, "last": l,
                                     "mean_share": finite(np.nanmean(pc1[f:l + 1]))}
                                    for f, l in repsim.pc1_runs(pc1, threshold=cfg["pc1_threshold"],
                                                                min_size=cfg["block_min_size"])],
        "block_sensitivity": {"found_share": finite(sens.attrs["found_share"]), "n_settings": sens.attrs["n_settings"],
                              "same_block_share": finite(float(np.mean(
                                  (sens["first_index"].values == (block or (-1, -1))[0])
                                  & (sens["last_index"].values == (block or (-1, -1))[1]))))},
        "candidate": None,
        "stage_rule": {"n_blocks": int(stage.sizes["block"]),
                       "largest_size": int(stage["size"].max()) if stage.sizes["block"] else 0},
    }
    if found.attrs["candidate"] >= 0:
        c = found.isel(run=found.attrs["candidate"])
        entry["candidate"] = {"first": int(c["first_index"]), "last": int(c["last_index"]),
                              "inside": finite(c["inside"]), "local_contrast": finite(c["local_contrast"])}
    if block is None:
        return entry
    f, l = block
    inside = np.arange(f, l + 1)
    rest = np.setdiff1d(np.arange(len(names)), inside)
    nb = cfg["block_neighbours"]

    def con(m):
        return repsim.block_contrast(m, f, l, neighbours=nb)

    plain, nopc, nodom = (jackknife_view(ds, k) for k in ("cka", "cka_no_pc1", "cka_no_dominant"))
    before, after = con(sim), con(ds["cka_no_pc1"].values)
    randoms = ds["random_removal_contrast"].values
    ctrl_plain, ctrl_dom = ds.attrs.get("control_plain_contrast"), ds.attrs.get("control_dominant_contrast")
    entry["block"] = {
        "first_layer": names[f], "last_layer": names[l], "first": f, "last": l, "size": l - f + 1,
        "relative_size": finite((l - f + 1) / len(names)), "inside": finite(before.inside),
        "local_contrast": finite(before.contrast),
        "pc1_in": finite(np.nanmean(pc1[inside])), "pc1_out": finite(np.nanmean(pc1[rest])) if rest.size else None,
        "pc1_abs_cos_in": finite(mean_abs_cos(ds["pc1_scores"].values[inside])),
        "inside_after_pc1_removal": finite(after.inside),
        "local_contrast_after_pc1_removal": finite(after.contrast),
        "local_contrast_without_dominant": finite(con(ds["cka_no_dominant"].values).contrast),
        "intervals": {
            "local_contrast": interval(plain, lambda m: con(m).contrast),
            "inside_change_after_pc1_removal": interval([plain, nopc], lambda a, r: con(r).inside - con(a).inside),
            "local_contrast_change_after_pc1_removal": interval(
                [plain, nopc], lambda a, r: con(r).contrast - con(a).contrast),
            "local_contrast_without_dominant": interval(nodom, lambda m: con(m).contrast),
        },
        "follow_up": None,
    }
    if randoms.size and np.isfinite(ctrl_plain) and np.isfinite(ctrl_dom):
        drops = ctrl_plain - randoms
        entry["block"]["follow_up"] = {
            "removed": int(len(np.atleast_1d(ds.attrs["dominant_removed"]))), "layer": ds.attrs["dominant_layer"],
            "contrast": finite(ctrl_plain), "dominant_drop": finite(ctrl_plain - ctrl_dom),
            "random_drop_mean": finite(np.mean(drops)), "random_drop_p95": finite(np.percentile(drops, 95)),
            "n_random": int(randoms.size),
            "beats_p95": bool(ctrl_plain - ctrl_dom > np.percentile(drops, 95)),
        }
    return entry


def _core(n_layers, edge):
    """Layer positions without the first and last ``edge`` layers."""
    return np.arange(edge, n_layers - edge) if n_layers > 2 * edge else np.arange(n_layers)


def _positions(n_layers, edge, block, window):
    """``(inside, rest, control)``: core layer positions inside the block (or, without a
    block, inside the relative-depth ``window`` -- a control) and outside it; None when
    there is neither or a side is empty."""
    core = _core(n_layers, edge)
    if block is not None:
        span, control = np.arange(block["first"], block["last"] + 1), False
    elif window is not None:
        span, control = exact.window_layers(window, n_layers), True
    else:
        return None
    inside = np.intersect1d(core, span)
    rest = np.setdiff1d(core, inside)
    return None if not inside.size or not rest.size else (inside, rest, control)


def seed_pair_summary(a, b, res, entries, edge=3, window=None) -> dict:
    """Corresponding-layer CKA between two seeds, inside vs outside the declared block
    (seed a's, else seed b's; first and last ``edge`` layers excluded), with jackknife
    intervals. Without a block in either seed and with a relative-depth ``window``
    (:func:`exact.relative_window` of the run's blocks), the same statistics inside that
    window: a block-free control (``control`` True)."""
    diag = np.diag(res["cka"].values)
    out = {"model_a": a["id"], "model_b": b["id"], "mean_corresponding_cka": finite(np.nanmean(diag)),
           "in_block_cka": None, "out_of_block_cka": None}
    block = entries[a["id"]]["block"] or entries[b["id"]]["block"]
    where = _positions(len(diag), edge, block, window)
    if where is None:
        return out
    inside, rest, control = where
    view = jackknife_view(res)
    out.update(in_block_cka=finite(np.nanmean(diag[inside])), out_of_block_cka=finite(np.nanmean(diag[rest])),
               control=control)
    if control:
        out["window"] = list(window)
    out["intervals"] = {
        "in_block_cka": interval(view, lambda m: np.nanmean(np.diag(m)[inside])),
        "out_of_block_cka": interval(view, lambda m: np.nanmean(np.diag(m)[rest])),
        "in_minus_out": interval(view, lambda m: np.nanmean(np.diag(m)[inside]) - np.nanmean(np.diag(m)[rest])),
    }
    return out


def arch_pair_summary(a, b, res, entries, edge=3, window=None) -> dict:
    """Cross-architecture CKA: how well a model's in-block and out-of-block layers are
    matched by their best counterpart in the other model (edge layers excluded). A model
    without a block, given a relative-depth ``window``, gets the same statistics inside the
    window, marked ``control_<side>`` (the block-free control)."""
    values = res["cka"].values
    out = {"model_a": a, "model_b": b, "mean_best_match_a": finite(np.nanmax(values, axis=1).mean()),
           "mean_best_match_b": finite(np.nanmax(values, axis=0).mean())}
    for side, model, axis in (("a", a, 1), ("b", b, 0)):
        best = np.nanmax(values, axis=axis)
        where = _positions(len(best), edge, entries[model]["block"], window)
        if where is None:
            continue
        inside, rest, control = where
        if control:
            out[f"control_{side}"] = True
        out[f"best_match_in_block_{side}"] = finite(best[inside].mean())
        out[f"best_match_out_of_block_{side}"] = finite(best[rest].mean())
        out[f"best_match_in_minus_out_{side}"] = interval(
            jackknife_view(res), lambda m, axis=axis, inside=inside, rest=rest:
            np.nanmax(m, axis=axis)[inside].mean() - np.nanmax(m, axis=axis)[rest].mean())
    return out


def block_window(entries) -> list[float] | None:
    """The relative depth of the fitted models' declared blocks (the controls' window)."""
    return exact.relative_window((m["block"]["first"], m["block"]["last"], m["n_layers"])
                                 for m in entries if m["fits"] and m["block"] is not None)


def mcnemar(right_a, right_b):
    """Exact two-sided McNemar test on paired correctness; returns ``(b, c, p)``."""
    from scipy.stats import binomtest

    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    return b, c, 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def wilson(k, n, level=0.9):
    """Wilson score interval of a proportion ``k / n``."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def mean_interval(d, level=0.9):
    """Mean of paired per-example differences ``d`` with a Student-t interval."""
    from scipy.stats import t

    n = len(d)
    se = float(np.std(d, ddof=1) / math.sqrt(n))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * se
    m = float(np.mean(d))
    return {"estimate": round(m, 4), "ci": [round(m - half, 4), round(m + half, 4)], "stderr": round(se, 4),
            "level": level}


def holm(pvalues):
    """Holm-adjusted p-values."""
    p = np.asarray(pvalues, dtype=float)
    adj = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(np.argsort(p)):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj


def matched_pair(models):
    """The accuracy-matched wide and deep architectures (declared rule): among fitted
    models on the main training fraction, every (wide, deep) architecture pair with the
    wide one wider and shallower; the pair whose mean test accuracies over seeds differ
    least. None when there is no such pair."""
    top = main_fraction(models)
    archs = {}
    for m in models:
        if m["train_fraction"] == top and m["fits"]:
            archs.setdefault((m["depth"], m["width"]), []).append(m)
    best = None
    for wa, wide in archs.items():
        for da, deep in archs.items():
            if wa[1] > da[1] and wa[0] < da[0]:
                gap = abs(np.mean([m["test_accuracy"] for m in wide]) - np.mean([m["test_accuracy"] for m in deep]))
                if best is None or gap < best[0]:
                    best = (gap, wa, da)
    return None if best is None else (best[1], best[2], round(float(best[0]), 4))


def output_summary(models, logits, y, classes, level=0.9) -> dict:
    """Per-example disagreement and per-class differences (C5), with models as units.

    Parameters
    ----------
    models : list of dict
        The per-model summaries (``fits``, architecture, seed, test accuracy).
    logits : dict
        ``{model id: array (n_images, n_classes)}`` on the output images (``n_outputs``
        test images: all 10,000 of CIFAR-10 where declared).
    y : array of int, shape (n_images,)
    classes : list of str

    The accuracy-matched pair (:func:`matched_pair`) is tested with every model of the two
    architectures as a unit: the balanced excess of cross-architecture over within-
    architecture disagreement against every relabelling of the models
    (:func:`exact.models_as_units`), per-class accuracy over seeds
    (:func:`exact.per_class_over_seeds`); the first seeds' exact McNemar tests stay as a
    description of one model pair.
    """
    preds = {m["id"]: np.asarray(logits[m["id"]]).argmax(1) for m in models}
    y = np.asarray(y)
    result = {"seed_disagreement": [], "wide_vs_deep": None, "n_images": int(len(y))}
    groups = {}
    for m in models:
        groups.setdefault((m["depth"], m["width"], m["train_fraction"]), []).append(m)
    for group in groups.values():
        group = sorted(group, key=lambda m: m["seed"])
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                d = preds[group[i]["id"]] != preds[group[j]["id"]]
                result["seed_disagreement"].append({
                    "model_a": group[i]["id"], "model_b": group[j]["id"], "disagreement": round(float(d.mean()), 4),
                    "disagreement_ci": wilson(int(d.sum()), len(d), level)})
    pair = matched_pair(models)
    if pair is None:
        return result
    top = main_fraction(models)
    every = [m["id"] for m in models if (m["depth"], m["width"]) in pair[:2] and m["train_fraction"] == top]
    disagree = {frozenset((a, b)): float(np.mean(preds[a] != preds[b]))
                for i, a in enumerate(every) for b in every[i + 1:]}  # every seed: refits at other thresholds
    wide = [m for m in models if (m["depth"], m["width"]) == pair[0] and m["train_fraction"] == top and m["fits"]]
    deep = [m for m in models if (m["depth"], m["width"]) == pair[1] and m["train_fraction"] == top and m["fits"]]
    units = [m["id"] for m in wide + deep]
    cross = [float(np.mean(preds[w["id"]] != preds[d["id"]])) for w in wide for d in deep]
    within = [s["disagreement"] for s in result["seed_disagreement"]
              if any(s["model_a"] == m["id"] for m in wide + deep)]
    w0, d0 = wide[0], deep[0]
    rw, rd = preds[w0["id"]] == y, preds[d0["id"]] == y
    per_class = []
    for c, name in enumerate(classes):
        sel = y == c
        b, cc, p = mcnemar(rw[sel], rd[sel])
        per_class.append({"class": name, "n": int(sel.sum()), "accuracy_wide": round(float(rw[sel].mean()), 4),
                          "accuracy_deep": round(float(rd[sel].mean()), 4),
                          "difference": round(float(rw[sel].mean() - rd[sel].mean()), 4),
                          "wide_only_right": b, "deep_only_right": cc, "p": round(p, 5)})
    for e, adj in zip(per_class, holm([e["p"] for e in per_class])):
        e["p_holm"] = round(float(adj), 5)
    _, _, p = mcnemar(rw, rd)
    cmp = exact.welch(cross, within, level) if len(cross) >= 2 and len(within) >= 2 else None
    alpha = round((1 - level) / 2, 6)
    correct = {u: preds[u] == y for u in units}
    result["wide_vs_deep"] = {
        "rule": "fitted models on the main training fraction; wider-and-shallower vs deeper architecture "
                "pair with the smallest difference in mean test accuracy over seeds",
        "wide": w0["id"], "deep": d0["id"], "wide_arch": list(pair[0]), "deep_arch": list(pair[1]),
        "n_images": int(len(y)),
        "accuracy_gap": pair[2], "accuracy_wide": round(float(rw.mean()), 4), "accuracy_deep": round(float(rd.mean()), 4),
        "cross_disagreements": [round(v, 4) for v in cross], "seed_disagreements": within,
        "disagreements": [{"model_a": a, "model_b": b, "disagreement": round(v, 4)}
                          for (a, b), v in ((tuple(sorted(k)), v) for k, v in disagree.items())],
        "models_as_units": exact.models_as_units(disagree, [m["id"] for m in wide], [m["id"] for m in deep], alpha),
        "per_class_over_seeds": exact.per_class_over_seeds(correct, y, classes, [m["id"] for m in wide],
                                                           [m["id"] for m in deep]) if len(wide) >= 2 <= len(deep)
        else None,
        "over_seeds": cmp,
        "disagreement": round(float(np.mean(preds[w0["id"]] != preds[d0["id"]])), 4),
        "overall_mcnemar_p": round(p, 5), "n_classes_significant": int(sum(e["p_holm"] < 0.05 for e in per_class)),
        "per_class": per_class,
    }
    return result


def disagreements_from_summary(summary):
    """``(disagree, wide ids, deep ids)`` of the accuracy-matched pair from a stored
    summary, for :func:`exact.models_as_units`: its ``disagreements`` (runs since issue 24),
    else the seed pairs' entries and the cross pairs in their stored order (wide seeds x
    deep seeds, each in the summary's model order)."""
    wd = summary["outputs"]["wide_vs_deep"]
    top = main_fraction(summary["models"])
    def ids(arch, fitted):
        return [m["id"] for m in summary["models"] if [m["depth"], m["width"]] == list(arch)
                and m["train_fraction"] == top and (m["fits"] or not fitted)]

    if wd.get("disagreements") is not None:
        rows = [(r["model_a"], r["model_b"], r["disagreement"]) for r in wd["disagreements"]]
    else:  # before issue 24 the cross pairs were every wide seed x every deep seed, in model order
        rows = [(s["model_a"], s["model_b"], s["disagreement"]) for s in summary["outputs"]["seed_disagreement"]]
        rows += [(w, d, v) for (w, d), v in zip(((w, d) for w in ids(wd["wide_arch"], False)
                                                 for d in ids(wd["deep_arch"], False)), wd["cross_disagreements"])]
    return ({frozenset((a, b)): float(v) for a, b, v in rows}, ids(wd["wide_arch"], True),
            ids(wd["deep_arch"], True))


SEED_METRICS = ("train_accuracy", "test_accuracy", "pc1_max", "block_size", "local_contrast", "pc1_in")


def seed_value(m, key):
    """A per-model number for the seed statistics (block measures: NaN without a block;
    block size: 0 without a block)."""
    if key == "block_size":
        return 0.0 if m["block"] is None else float(m["block"]["size"])
    if key in ("local_contrast", "pc1_in"):
        return math.nan if m["block"] is None or m["block"][key] is None else float(m["block"][key])
    return math.nan if m.get(key) is None else float(m[key])


def seed_aggregates(models, level=0.9) -> dict:
    """Across the *fitted* seeds: mean, spread and t interval per architecture with >= 2 of
    them (``repsim.aggregate_seeds``), and comparisons between them: Welch
    (:func:`exact.welch`: undefined, not p = 0, when neither side varies) and the exact
    two-sided permutation test over seed labels (:func:`exact.permutation_greater`); each
    entry lists the seeds left out as not fitted. Recipe checks are no seeds: left out."""
    groups, unfit = {}, {}
    for m in standard(models):
        arch = f"resnet{m['depth']}_w{m['width']}_f{m['train_fraction']:g}"
        (groups if m["fits"] else unfit).setdefault(arch, []).append(m)
    groups = {k: v for k, v in groups.items() if len(v) >= 2}
    out = {"per_architecture": {}, "comparisons": []}
    for arch, group in groups.items():
        entry = {"seeds": [m["seed"] for m in group], "unfit_seeds": [m["seed"] for m in unfit.get(arch, [])]}
        for key in SEED_METRICS:
            vals = [seed_value(m, key) for m in group]
            agg = repsim.aggregate_seeds(vals, level=level) if np.isfinite(vals).sum() >= 2 else None
            entry[key] = {"values": [finite(v) for v in vals],
                          "mean": None if agg is None else finite(float(agg["mean"])),
                          "std": None if agg is None else finite(float(agg["std"])),
                          # no seed-to-seed spread: a t interval is undefined, not [mean, mean]
                          "ci": None if agg is None or not float(agg["std"]) > 0 else
                          [finite(float(agg["ci_low"])), finite(float(agg["ci_high"]))]}
        out["per_architecture"][arch] = entry
    archs = sorted(groups)
    for i, a in enumerate(archs):
        for b in archs[i + 1:]:
            row = {"a": a, "b": b}
            for key in SEED_METRICS:
                va = [seed_value(m, key) for m in groups[a]]
                vb = [seed_value(m, key) for m in groups[b]]
                if not (np.isfinite(va).all() and np.isfinite(vb).all()):
                    row[key] = None
                    continue
                row[key] = exact.welch(va, vb, level)
                row[key]["permutation"] = exact.permutation_greater(va, vb, two_sided=True)
            out["comparisons"].append(row)
    return out
