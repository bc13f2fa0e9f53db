"""The paper's claims, tested on the declared block, with the declared criteria.

Each claim is checked on *fitted* models (train accuracy >= ``fit_threshold``; the others
are named), single-model findings are counted over seeds ("in k of m seeds"), and each
binary verdict has an exact test beside it. The continuous statistics over seeds come
first (:func:`headline`): with two or three seeds a yes/no count carries little evidence
(a block in 2 of 2 deep seeds and 0 of 3 shallow ones is Fisher p = 0.10, the smallest
p-value 2 + 3 models can give). The criteria of issue 12, reworded by issue 24:

- ``block_deep_not_small``: >= 3 seeds of the deepest model trained and a block in >= 2/3 of
  them, a seed below the fit threshold counting as one without a block; none in any fitted
  seed of the smallest. Not testable with fewer than 3 seeds trained or 2 fitted;
- ``c1_size_with_depth`` / ``c1_size_with_width``: block size (0 without a block, mean over
  fitted seeds) rising along the series. ``emerges`` when only the last point has a block
  (the block appears; growth needs two points with one); ``not reached`` when no point has
  a block and the series' largest model has fewer parameters than the smallest model with
  a block (the series stops below the capacity where the block appears). A depth series
  with >= 4 depths with a fitted seed is tested for growth (:mod:`wide_deep.growth`:
  Kendall's tau over the depths, exact permutation p): met (grows), emerges between X
  and Y, not reached, not met;
- ``c2_less_data``: the block at lower capacity with less data (same architecture and seed
  on more data, both fitted);
- ``c3_pc1_inside``: PC1's share higher inside than outside in each seed with a block;
- ``c3_pc1_removal``: removing PC1 lowers inside CKA by >= 0.1 and local contrast by >= 50%;
- ``c4_seeds``: corresponding-layer CKA >= 0.3 lower inside the block than outside in every
  seed pair with a block, and below the same statistic of every block-free seed pair at the
  same relative depth (the control); ``incomplete`` without the control;
- ``c4_architectures``: every model with a block (k of m) finds poorer best matches for its
  block layers in every other architecture, and more so than block-free models at the same
  relative depth; ``incomplete`` when some are untested or the control is missing;
- ``c5_wide_deep``: cross-architecture disagreement of an accuracy-matched pair above the
  mean of within-wide and within-deep, exact permutation over the models' labels
  (models as units); ``underpowered`` when no outcome of the design could reach the level;
- ``follow_up``: removing the dominant 1% lowers local contrast more than the 95th
  percentile of random 1% removals.

Verdicts: met, not met, not testable, emerges, not reached, incomplete, underpowered.
Recipe checks (a sub-grid's own weight decay or steps) are no seeds: every claim, count and
headline here leaves them out (:mod:`wide_deep.recipe` compares them with their twins).
One-sided exact tests use ``alpha = (1 - level) / 2`` (0.05 at the default level 0.9).
"""

from __future__ import annotations

import copy
import math

import numpy as np

from . import exact
from .analyse import main_fraction
from .config import standard
from .growth import MIN_DEPTHS, depth_curve
from .recipe import pc1_removal_dissolves
from .summaries import disagreements_from_summary

VERDICTS = ("met", "not met", "not testable", "emerges", "not reached", "incomplete", "underpowered")


def _fmt(v, spec=".3f"):
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _iv(iv):
    return "n/a" if iv is None else f"{_fmt(iv['estimate'])} [{_fmt(iv['ci'][0])}, {_fmt(iv['ci'][1])}]"


def _claim(key, claim, criterion, met, evidence, **extra):
    """One finding; ``met`` is True / False / None or one of :data:`VERDICTS`."""
    verdict = met if isinstance(met, str) else {True: "met", False: "not met", None: "not testable"}[met]
    assert verdict in VERDICTS, verdict
    return {"key": key, "claim": claim, "criterion": criterion, "met": verdict, "evidence": evidence, **extra}


def _arch(m):
    return (m["depth"], m["width"])


def _alpha(cfg):
    return round((1.0 - cfg["level"]) / 2, 6)


def _name(a):
    return f"ResNet-{a[0]}" + ("" if a[1] == 1 else f"x{a[1]}")


def _p(v):
    return "n/a" if v is None else f"{v:.2f}" if v >= 0.01 else f"{v:.2g}"


def block_statistic(m):
    """The declared rule's statistic of a model: the local contrast of its block, or of the
    segmentation's sharpest run when it has none (None when there is neither)."""
    best = m["block"] or m.get("candidate")
    return None if best is None else best["local_contrast"]


#: The seed claims compare architectures with at least this many seeds trained (declared for
#: the v2 run before any of its models was analysed: its depth curve adds one-seed points
#: deeper than ResNet-110, which test growth (C1), not the seed claims).
MIN_SEEDS = 3


def extremes(summary):
    """``(deepest, smallest, top)``: the deepest and the smallest architecture trained on the
    main training fraction with at least :data:`MIN_SEEDS` seeds (every trained model
    counts, fitted or not; all architectures there when none has that many), and that
    fraction."""
    models = summary["models"]
    top = main_fraction(models)
    seeds: dict = {}
    for m in models:
        if m["train_fraction"] == top:
            seeds.setdefault(_arch(m), set()).add(m["seed"])
    archs = {a for a, s in seeds.items() if len(s) >= MIN_SEEDS} or set(seeds)
    return (max(archs, key=lambda a: (a[0], a[1])), min(archs, key=lambda a: (a[0] * a[1] ** 2, a[0])), top)


def headline(summary, cfg) -> list[dict]:
    """The continuous statistics over seeds, deepest vs smallest architecture: the rule's
    local contrast (exact one-sided permutation test, seeds as units) and PC1 max (Welch,
    two-sided, and the exact test), over every trained seed and over the fitted ones."""
    summary = seeds_only(summary)
    deepest, smallest, top = extremes(summary)
    if deepest == smallest:
        return []
    pick = {a: sorted((m for m in summary["models"] if _arch(m) == a and m["train_fraction"] == top),
                      key=lambda m: m["seed"]) for a in (deepest, smallest)}
    out = []
    for label, value in (("local contrast (declared block, or the sharpest run without one)", block_statistic),
                         ("PC1 max", lambda m: m["pc1_max"])):
        for subset, keep in (("every trained seed", lambda m: True), ("fitted seeds", lambda m: m["fits"])):
            d = [value(m) for m in pick[deepest] if keep(m)]
            s = [value(m) for m in pick[smallest] if keep(m)]
            if None in d + s:
                continue
            out.append({"statistic": label, "seeds": subset, "deep": _name(deepest), "small": _name(smallest),
                        "values_deep": d, "values_small": s,
                        "unfit_deep": [m["seed"] for m in pick[deepest] if not m["fits"]] if subset[0] == "e" else [],
                        "permutation": exact.permutation_greater(d, s), "welch": exact.welch(d, s, cfg["level"])})
    return out


def headline_lines(rows) -> list[str]:
    """One sentence per headline statistic."""
    lines = []
    for r in rows:
        perm, w = r["permutation"], r["welch"]
        unfit = f" (seed {', '.join(map(str, r['unfit_deep']))} not fitted)" if r["unfit_deep"] else ""
        text = (f"{r['statistic']}, {r['seeds']}: {r['deep']} {', '.join(_fmt(v) for v in r['values_deep'])}{unfit} "
                f"vs {r['small']} {', '.join(_fmt(v) for v in r['values_small'])}; difference "
                f"{_fmt(perm['difference'])}, exact one-sided permutation p = {_p(perm['p'])} "
                f"({perm['n_splits']} splits, smallest possible p {_p(perm['min_p'])})")
        if w is not None:
            text += ("; Welch " + (w["undefined"] if w["p"] is None else f"two-sided p = {_p(w['p'])}"))
        lines.append(text)
    return lines


def seeds_only(summary):
    """A shallow copy of ``summary`` without its recipe checks (they are no seeds)."""
    return dict(summary, models=standard(summary["models"]))


def with_fit_threshold(summary, threshold):
    """A copy of ``summary`` whose models' ``fits`` is recomputed at ``threshold`` (None:
    every model counts as fitted)."""
    s = copy.copy(summary)
    s["models"] = [dict(m, fits=threshold is None or m["train_accuracy"] >= threshold) for m in summary["models"]]
    return s


def verdicts_by_threshold(summary, cfg, thresholds=(0.98, 0.99)) -> list[dict]:
    """Every claim's verdict at each fit threshold in ``thresholds`` (and the run's own),
    and with every trained seed included whatever its fit."""
    summary = seeds_only(summary)
    rows = []
    for t in sorted({*thresholds, cfg["fit_threshold"]}) + [None]:
        fs = findings(with_fit_threshold(summary, t), dict(cfg, fit_threshold=0.0 if t is None else t))
        label = "every trained seed" if t is None else f"fit >= {t:g}"
        n_fit = sum(t is None or m["train_accuracy"] >= t for m in summary["models"])
        rows.append({"setting": label, "n_models": n_fit, "verdicts": {f["key"]: f["met"] for f in fs}})
    return rows


def _fisher_text(label, fd, fs, deepest, smallest):
    return (f"Fisher exact, one-sided, {label}: {_name(deepest)} {fd[0]}/{fd[1]} vs {_name(smallest)} "
            f"{fs[0]}/{fs[1]}, p = {_p(fd[2]['p'])} (the smallest p {fd[1]} + {fs[1]} models can give: "
            f"{_p(fd[2]['min_p'])})")


def _block_claim(summary, cfg):
    models = summary["models"]
    deepest, smallest, top = extremes(summary)
    d = [m for m in models if _arch(m) == deepest and m["train_fraction"] == top]
    s = [m for m in models if _arch(m) == smallest and m["train_fraction"] == top]
    dfit, sfit = [m for m in d if m["fits"]], [m for m in s if m["fits"]]
    kd, ks = sum(m["block"] is not None for m in dfit), sum(m["block"] is not None for m in sfit)
    met = None if (len(d) < 3 or len(dfit) < 2 or not sfit or deepest == smallest) else (
        kd >= 2 * len(d) / 3 and ks == 0)
    unfit = [m["id"] for m in d + s if not m["fits"]]
    text = (f"{_name(deepest)}: block in {kd} of {len(d)} trained seeds ({len(dfit)} fitted); {_name(smallest)}: "
            f"in {ks} of {len(sfit)} fitted seeds.")
    if unfit:
        text += f" Not fitted (train acc < {cfg['fit_threshold']}), counted as without a block: {', '.join(unfit)}."
    fisher = {}
    if dfit and sfit and deepest != smallest:
        fisher["fitted"] = exact.fisher_presence(kd, len(dfit), ks, len(sfit))
        text += " " + _fisher_text("fitted seeds", (kd, len(dfit), fisher["fitted"]), (ks, len(sfit)), deepest,
                                   smallest)
        ka, ksa = sum(m["block"] is not None for m in d), sum(m["block"] is not None for m in s)
        if len(d) + len(s) > len(dfit) + len(sfit):
            fisher["every_seed"] = exact.fisher_presence(ka, len(d), ksa, len(s))
            text += "; " + _fisher_text("every trained seed (the declared rule's verdict on each)",
                                        (ka, len(d), fisher["every_seed"]), (ksa, len(s)), deepest, smallest)
        text += (". A presence/absence count over this few seeds is weak evidence" if fisher["fitted"]["p"] > 0.01
                 else "")
        text += "; the continuous statistics above carry more."
    return _claim(
        "block_deep_not_small", "The deepest model has a block and the smallest has none.",
        "at least 3 seeds of the deepest model trained and a block in at least two thirds of them (a seed below the "
        "fit threshold counts as one without a block; not testable with fewer than 2 fitted), and a block in no "
        "fitted seed of the smallest", met, text, fisher=fisher)


def _series_verdict(g, block_params, dim):
    """Verdict of one series ``[(x, mean size, n seeds, max parameters)]`` sorted by x."""
    sizes = [v for _, v, _, _ in g]
    rising = all(b >= a for a, b in zip(sizes, sizes[1:])) and sizes[-1] > sizes[0]
    with_block = sum(v > 0 for v in sizes)
    if rising and with_block >= 2:
        return "met"
    if rising:
        return "emerges"
    if with_block == 0 and block_params is not None and max(p for *_, p in g) < block_params:
        return "not reached"
    return "not met"


def _c1_claims(summary, cfg, main):
    def size(m):
        return 0.0 if m["block"] is None else m["block"]["size"] / m["n_layers"]

    top = main_fraction(summary["models"])  # where a block appears in this run, fitted or not
    with_block = [m.get("n_parameters") for m in summary["models"] if m["block"] is not None
                  and m["train_fraction"] == top]
    block_params = min(with_block) if with_block and None not in with_block else None
    out = []
    for key, dim, other in (("c1_size_with_depth", 0, 1), ("c1_size_with_width", 1, 0)):
        series = {}
        for m in main:
            series.setdefault(_arch(m), []).append(m)
        groups = {}
        for a, ms in sorted(series.items()):
            params = max((m.get("n_parameters") or 0) for m in ms)
            groups.setdefault(a[other], []).append((a[dim], float(np.mean([size(m) for m in ms])), len(ms), params))
        tested = [(k, g) for k, g in groups.items() if len(g) >= 2]
        # the series' largest trained point has no fitted seed: the decisive point is missing
        trained = {}
        for m in summary["models"]:
            if m["train_fraction"] == main_fraction(summary["models"]):
                trained.setdefault(_arch(m)[other], set()).add(_arch(m)[dim])
        verdicts = [_series_verdict(g, block_params, dim) if max(trained[k]) == g[-1][0] or
                    _series_verdict(g, block_params, dim) == "met" else None for k, g in tested]
        # a depth curve (>= 4 depths with a fitted seed) is tested for growth
        curves = [depth_curve([m for m in main if _arch(m)[other] == k], block_params, _alpha(cfg))
                  if dim == 0 and len(g) >= MIN_DEPTHS else None for k, g in tested]
        verdicts = [v if c is None else c["verdict"] for v, c in zip(verdicts, curves)]
        unfit_end = [max(trained[k]) for (k, g), c in zip(tested, curves) if c and max(trained[k]) != g[-1][0]]
        tested = [g for _, g in tested]
        met = None if not verdicts or None in verdicts else next(
            (v for v in ("not met", "not reached", "emerges") if v in verdicts), "met")
        label = "depth" if dim == 0 else "width"
        text = "; ".join(", ".join(f"{'ResNet-' if dim == 0 else 'x'}{x}: {v:.2f} ({n} seed(s), "
                                   f"{p / 1e6:.2f} M parameters)" for x, v, n, p in g)
                         for g in tested) or f"no two {label}s at one {'width' if dim == 0 else 'depth'}"
        if tested and met is None:
            text += f"; the series' largest trained {label} has no fitted seed"
        criterion = _C1
        if any(curves):
            text += "; " + "; ".join(c["text"] for c in curves if c) + "".join(
                f" (ResNet-{d}, the deepest trained, has no fitted seed and is left out)" for d in unfit_end)
            criterion += _C1_CURVE.format(n=MIN_DEPTHS, alpha=_alpha(cfg))
        elif met == "emerges":
            text += (". The block appears between the last two points and is absent before: this shows its "
                     f"emergence with {label}, not growth (growth needs two {label}s with a block)")
        if met == "not reached" and block_params is not None and not any(curves):
            text += (f". No point of the series has a block, and its largest model stays below the smallest model "
                     f"with a block ({block_params / 1e6:.2f} M parameters): the series stops before the capacity "
                     "where the block appears, so this neither confirms nor refutes the claim")
        out.append(_claim(key, f"C1: the block grows with {label}.", criterion.format(label=label), met,
                          text + ".", **({"curve": [c for c in curves if c]} if any(curves) else {})))
    return out


_C1 = ("relative block size (0 without a block; mean over fitted seeds) rising with {label}; 'emerges' when only the "
       "last point has a block; 'not reached' when no point has one and the largest model has fewer parameters than "
       "the smallest model with a block")
_C1_CURVE = ("; a depth curve of >= {n} depths with a fitted seed: Kendall's tau of that size against depth (depths "
             "as units), exact one-sided permutation p <= {alpha:g} and a larger block at the deepest than at the "
             "shallowest depth with one ('emerges between X and Y' when the blocks lie above every block-free depth "
             "without that)")


def findings(summary, cfg) -> list[dict]:
    """Every claim with its criterion, verdict (one of :data:`VERDICTS`) and numbers."""
    summary = seeds_only(summary)
    models = summary["models"]
    fitted = [m for m in models if m["fits"]]
    top = main_fraction(models)
    main = [m for m in fitted if m["train_fraction"] == top]
    out = [_block_claim(summary, cfg)] if models else []
    out += _c1_claims(summary, cfg, main)

    def size(m):
        return 0.0 if m["block"] is None else m["block"]["size"] / m["n_layers"]

    # C2: less data
    pairs = []
    for m in fitted:
        for full in fitted:
            if _arch(full) == _arch(m) and full["seed"] == m["seed"] and full["train_fraction"] > m["train_fraction"]:
                pairs.append((m, full))
    met = None if not pairs else all(size(m) > size(f) for m, f in pairs)
    out.append(_claim("c2_less_data", "C2: with less data the block appears at lower capacity (or grows).",
                      "reduced-data model has a larger block (relative size) than the same architecture and seed "
                      "on more data, both fitted",
                      met, "; ".join(f"{m['id']}: {size(m):.2f} vs {f['id']}: {size(f):.2f}" for m, f in pairs)
                      or "no fitted reduced-data / full-data pair in this run"))

    with_block = [m for m in fitted if m["block"] is not None]
    # C3: PC1 inside vs outside, and removal
    rows = [m for m in with_block if m["block"]["pc1_out"] is not None]
    ok = [m["block"]["pc1_in"] > m["block"]["pc1_out"] for m in rows]
    out.append(_claim("c3_pc1_inside", "C3: PC1 explains more of the variance inside the block than outside.",
                      "PC1 share higher inside than outside in each seed with a block",
                      None if not rows else all(ok),
                      f"in {sum(ok)} of {len(rows)} models with a block: " + "; ".join(
                          f"{m['id']}: {m['block']['pc1_in']:.3f} inside vs {m['block']['pc1_out']:.3f} outside, "
                          f"mean |cos| of the block layers' PC1 scores {_fmt(m['block']['pc1_abs_cos_in'])}"
                          for m in rows) if rows else "no fitted model has a block"))
    ok = [bool(pc1_removal_dissolves(m["block"])) for m in with_block]
    out.append(_claim(
        "c3_pc1_removal", "C3: removing PC1 dissolves the block.",
        "inside CKA falls by >= 0.1 and local contrast by >= 50% in each model with a block",
        None if not with_block else all(ok),
        f"in {sum(ok)} of {len(with_block)}: " + "; ".join(
            f"{m['id']}: inside {m['block']['inside']:.3f} -> {_fmt(m['block']['inside_after_pc1_removal'])} "
            f"(change {_iv(m['block']['intervals']['inside_change_after_pc1_removal'])}), local contrast "
            f"{m['block']['local_contrast']:.3f} -> {_fmt(m['block']['local_contrast_after_pc1_removal'])} "
            f"(change {_iv(m['block']['intervals']['local_contrast_change_after_pc1_removal'])})"
            for m in with_block) if with_block else "no fitted model has a block"))

    # C4: seeds and architectures, each against block-free controls at the same relative depth
    fit_ids = {m["id"] for m in fitted}
    out += [_c4_seeds(summary, fit_ids), _c4_architectures(summary, fit_ids, main)]
    out.append(_c5(summary, cfg))

    # follow-up: dominant 1% vs random 1%
    rows = [m for m in with_block if m["block"]["follow_up"] is not None]
    ok = [m["block"]["follow_up"]["beats_p95"] for m in rows]
    out.append(_claim(
        "follow_up", "Follow-up: the block is carried by a few dominant examples.",
        f"removing the top {cfg['dominant_fraction']:.0%} by |PC1 score| at the block's middle layer lowers local "
        f"contrast more than the 95th percentile of {cfg['random_removals']} random removals of as many examples "
        "(issue 12 asks for the top 1% against >= 20)", None if not rows else all(ok),
        f"in {sum(ok)} of {len(rows)}: " + "; ".join(
            f"{m['id']}: drop {_fmt(m['block']['follow_up']['dominant_drop'])} without "
            f"{m['block']['follow_up']['removed']} dominant examples vs random mean "
            f"{_fmt(m['block']['follow_up']['random_drop_mean'])}, 95th percentile "
            f"{_fmt(m['block']['follow_up']['random_drop_p95'])} ({m['block']['follow_up']['n_random']} removals)"
            for m in rows) if rows else "no fitted model has a block"))
    return out


def _pending(summary):
    """Why a control or a comparison is missing: the run predates it, or has nothing to compare."""
    if summary.get("schema", 1) < 2:
        return "not computed in this run (it predates issue 24; the next run with the models computes it)"
    return "none in this run (no block-free model of that kind)"


def _c4_seeds(summary, fit_ids):
    pairs = [p for p in summary["cross_seed"] if p["model_a"] in fit_ids and p["model_b"] in fit_ids
             and p["in_block_cka"] is not None]
    sp = [p for p in pairs if not p.get("control")]
    controls = [p for p in pairs if p.get("control")]
    diffs = [p["in_block_cka"] - p["out_of_block_cka"] for p in sp]
    ok = [d <= -0.3 for d in diffs]
    text = f"in {sum(ok)} of {len(sp)} seed pairs: " + "; ".join(
        f"{p['model_a']} vs {p['model_b']}: {p['in_block_cka']:.3f} inside vs {p['out_of_block_cka']:.3f} outside "
        f"(difference {_iv(p.get('intervals', {}).get('in_minus_out'))})" for p in sp)
    if not sp:
        return _claim("c4_seeds", "C4: across seeds, block layers match less than the rest.", _C4S, None,
                      "no seed pair of fitted models where a seed has a block")
    if not controls:
        met = "incomplete" if all(ok) else False
        text += (". Control: the same statistic at the same relative depth in block-free seed pairs (late layers "
                 f"may be seed-specific in any network) -- {_pending(summary)}")
    else:
        cd = [p["in_block_cka"] - p["out_of_block_cka"] for p in controls]
        met = all(ok) and max(diffs) < min(cd)
        text += (f". Controls at relative depth {controls[0].get('window')}: " + "; ".join(
            f"{p['model_a']} vs {p['model_b']}: {p['in_block_cka']:.3f} vs {p['out_of_block_cka']:.3f}"
            for p in controls) + f"; excess over the controls {np.mean(diffs) - np.mean(cd):.3f}")
    return _claim("c4_seeds", "C4: across seeds, block layers match less than the rest.", _C4S, met, text)


_C4S = ("corresponding-layer CKA >= 0.3 lower inside the block than outside in every seed pair with a block (first "
        "and last edge layers excluded), and below the same difference of every block-free seed pair at the same "
        "relative depth (control)")


def _c4_architectures(summary, fit_ids, main):
    rows, ok, tested, controls = [], [], set(), []
    for p in summary["cross_architecture"]:
        for side in ("a", "b"):
            diff = p.get(f"best_match_in_minus_out_{side}")
            if diff is None or p[f"model_{side}"] not in fit_ids:
                continue
            if p.get(f"control_{side}"):
                controls.append(diff["estimate"])
                continue
            tested.add(p[f"model_{side}"])
            ok.append(diff["ci"][1] < 0)
            other = p["model_b" if side == "a" else "model_a"]
            rows.append((diff["estimate"], f"{p['model_' + side]} (best matches in {other}): "
                         f"{p[f'best_match_in_block_{side}']:.3f} in block vs "
                         f"{p[f'best_match_out_of_block_{side}']:.3f} outside, difference {_iv(diff)}"))
    blocks = sorted(m["id"] for m in main if m["block"] is not None)
    text = "; ".join(r for _, r in rows) or "no architecture pair with a block"
    if rows:
        text = f"{len(tested)} of {len(blocks)} fitted models with a block compared: " + text
    missing = [b for b in blocks if b not in tested]
    if not rows:
        met = None
    elif not all(ok):
        met = False
    elif missing or not controls:
        met = "incomplete"
    else:
        met = max(e for e, _ in rows) < min(controls)
    if rows and missing:
        text += f". Not compared: {', '.join(missing)} -- {_pending(summary)}"
    if rows and not controls:
        text += f". Control (best matches of block-free models' layers at the same relative depth): {_pending(summary)}"
    elif controls:
        text += f". Controls: in - out {', '.join(_fmt(c) for c in controls)}"
    return _claim("c4_architectures", "C4: across architectures, block layers find poorer matches.",
                  "best-match CKA lower inside the block (90% jackknife interval of the difference below 0) for every "
                  "fitted model with a block against every other architecture, and lower than the same difference of "
                  "block-free models at the same relative depth", met, text)


def _c5(summary, cfg):
    wd = summary["outputs"]["wide_vs_deep"]
    name = ("c5_wide_deep", "C5: wide and deep models disagree more than seeds.",
            "accuracy-matched pair; mean cross-architecture disagreement above the mean of the within-wide and "
            "within-deep seed-pair means, exact one-sided permutation over the models' architecture labels (models "
            f"as units) at alpha {_alpha(cfg):g}; 'underpowered' when no relabelling could reach alpha")
    if wd is None:
        return _claim(*name, None, "no fitted wide/deep pair.")
    # from the stored disagreements of every seed pair, so that a refit at another threshold is tested too
    mu = exact.models_as_units(*disagreements_from_summary(summary), alpha=_alpha(cfg))
    if mu is None:
        return _claim(*name, None, f"{wd['wide']} vs {wd['deep']}: needs >= 2 seeds of each.")
    n = wd.get("n_images", summary.get("n_eval"))
    text = (f"{_name(wd['wide_arch'])} ({len(mu['wide'])} seeds) vs {_name(wd['deep_arch'])} ({len(mu['deep'])} "
            f"seeds), mean accuracy gap {wd['accuracy_gap']:.3f}, on {n:,} test images: cross disagreement "
            f"{mu['cross_mean']:.3f} vs within-wide {mu['within_wide']:.3f} and within-deep {mu['within_deep']:.3f}; "
            f"balanced excess {mu['excess']:.3f}, exact p = {_p(mu['p'])} over {mu['n_splits']} relabellings "
            f"(smallest possible {_p(mu['min_p'])})")
    if mu["underpowered"]:
        met = "underpowered"
        text += (f": no outcome of {len(mu['wide'])} + {len(mu['deep'])} models can reach alpha {_alpha(cfg):g}, "
                 "so the test is underpowered, not failed (4 + 4 models would allow p = 0.029)")
    else:
        met = bool(mu["p"] <= _alpha(cfg) and mu["excess"] > 0)
    pc = wd.get("per_class_over_seeds")
    text += ("; per-class accuracy over seeds: " + (
        f"{sum(r['p_holm'] < 0.05 for r in pc)} of {len(pc)} classes differ (exact permutation over seed labels, "
        "Holm)" if pc else _pending(summary)))
    return _claim(*name, met, text + ".", models_as_units=mu)
