"""The paper's claims, tested on the declared block, with the pre-declared criteria.

Each claim is checked on *fitted* models only (train accuracy >= ``fit_threshold``; the
others are listed and excluded), single-model findings are counted over seeds ("in k of
m seeds"), and every criterion was fixed before any run (issue 12, "Done when"):

- ``block_deep_not_small``: a block in >= 2 of 3 seeds of the deepest model, none in the smallest;
- ``c1_size_with_depth``: block size (0 without a block, mean over seeds) rising with depth;
- ``c2_less_data``: the block at lower capacity with less data (reduced-data models vs the
  same architecture on more data, both fitted);
- ``c3_pc1_inside``: PC1's share higher inside than outside in each seed with a block;
- ``c3_pc1_removal``: removing PC1 lowers inside CKA by >= 0.1 and local contrast by >= 50%;
- ``c4_seeds``: cross-seed corresponding-layer CKA >= 0.3 lower inside the block than outside;
- ``c4_architectures``: block layers find poorer best matches in other architectures;
- ``c5_wide_deep``: an accuracy-matched wide and deep pair disagree more than seeds (over seeds);
- ``follow_up``: removing the dominant 1% lowers local contrast more than the 95th
  percentile of random 1% removals.
"""

from __future__ import annotations

import math

import numpy as np

from .analyse import main_fraction


def _fmt(v, spec=".3f"):
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _iv(iv):
    return "n/a" if iv is None else f"{_fmt(iv['estimate'])} [{_fmt(iv['ci'][0])}, {_fmt(iv['ci'][1])}]"


def _claim(key, claim, criterion, met, evidence):
    return {"key": key, "claim": claim, "criterion": criterion,
            "met": {True: "met", False: "not met", None: "not testable"}[met], "evidence": evidence}


def _arch(m):
    return (m["depth"], m["width"])


def findings(summary, cfg) -> list[dict]:
    """Every claim with its criterion, verdict (met / not met / not testable) and numbers."""
    models = summary["models"]
    fitted = [m for m in models if m["fits"]]
    top = main_fraction(models)
    main = [m for m in fitted if m["train_fraction"] == top]
    out = []
    unfit = [m["id"] for m in models if not m["fits"]]
    excluded = (f" Excluded as not fitted (train acc < {cfg['fit_threshold']}): {', '.join(unfit)}." if unfit else "")

    # the block in the deepest model, not in the smallest
    if main:
        deepest = max({_arch(m) for m in main}, key=lambda a: (a[0], a[1]))
        smallest = min({_arch(m) for m in main}, key=lambda a: (a[0] * a[1] ** 2, a[0]))
        d = [m for m in main if _arch(m) == deepest]
        s = [m for m in main if _arch(m) == smallest]
        kd, ks = sum(m["block"] is not None for m in d), sum(m["block"] is not None for m in s)
        met = None if len(d) < 3 or deepest == smallest else (kd >= 2 * len(d) / 3 and ks == 0)
        out.append(_claim(
            "block_deep_not_small", "The deepest model has a block and the smallest has none.",
            "block in >= 2 of 3 seeds of the deepest model and in no seed of the smallest",
            met, f"ResNet-{deepest[0]}x{deepest[1]}: block in {kd} of {len(d)} fitted seeds; "
                 f"ResNet-{smallest[0]}x{smallest[1]}: in {ks} of {len(s)}." + excluded))

    # C1: block size with depth (width-1 models) and width
    def size(m):
        return 0.0 if m["block"] is None else m["block"]["size"] / m["n_layers"]

    for key, dim, other in (("c1_size_with_depth", 0, 1), ("c1_size_with_width", 1, 0)):
        series = {}
        for m in main:
            series.setdefault(_arch(m), []).append(size(m))
        rows = sorted((a, float(np.mean(v)), len(v)) for a, v in series.items())
        groups = {}
        for a, v, n in rows:
            groups.setdefault(a[other], []).append((a[dim], v, n))
        tested = [g for g in groups.values() if len(g) >= 2]
        met = None if not tested else all(
            all(b[1] >= a[1] for a, b in zip(g, g[1:])) and g[-1][1] > g[0][1] for g in tested)
        label = "depth" if dim == 0 else "width"
        text = "; ".join(", ".join(f"{'ResNet-' if dim == 0 else 'x'}{x}: {v:.2f} ({n} seed(s))" for x, v, n in g)
                         for g in tested) or f"no two {label}s at one {'width' if dim == 0 else 'depth'}"
        out.append(_claim(key, f"C1: the block grows with {label}.",
                          f"relative block size (0 without a block; mean over fitted seeds) rising with {label}",
                          met, text + "."))

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
    ok = []
    for m in with_block:
        b = m["block"]
        drop_in = b["inside"] - b["inside_after_pc1_removal"]
        rel = (b["local_contrast"] - b["local_contrast_after_pc1_removal"]) / b["local_contrast"]
        ok.append(drop_in >= 0.1 and rel >= 0.5)
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

    # C4: seeds and architectures
    fit_ids = {m["id"] for m in fitted}
    sp = [p for p in summary["cross_seed"] if p["in_block_cka"] is not None
          and p["model_a"] in fit_ids and p["model_b"] in fit_ids]
    ok = [p["out_of_block_cka"] - p["in_block_cka"] >= 0.3 for p in sp]
    out.append(_claim(
        "c4_seeds", "C4: across seeds, block layers match less than the rest.",
        f"corresponding-layer CKA >= 0.3 lower inside the block than outside (first and last "
        f"{cfg['edge_layers']} layers excluded)", None if not sp else all(ok),
        f"in {sum(ok)} of {len(sp)} seed pairs: " + "; ".join(
            f"{p['model_a']} vs {p['model_b']}: {p['in_block_cka']:.3f} inside vs {p['out_of_block_cka']:.3f} "
            f"outside (difference {_iv(p.get('intervals', {}).get('in_minus_out'))})" for p in sp)
        if sp else "no seed pair of fitted models where the first has a block"))
    rows, ok = [], []
    for p in summary["cross_architecture"]:
        for side in ("a", "b"):
            diff = p.get(f"best_match_in_minus_out_{side}")
            if diff is not None and p[f"model_{side}"] in fit_ids:
                ok.append(diff["ci"][1] < 0)
                other = p["model_b" if side == "a" else "model_a"]
                rows.append(f"{p['model_' + side]} (best matches in {other}): "
                            f"{p[f'best_match_in_block_{side}']:.3f} in block vs "
                            f"{p[f'best_match_out_of_block_{side}']:.3f} outside, difference {_iv(diff)}")
    out.append(_claim("c4_architectures", "C4: across architectures, block layers find poorer matches.",
                      "best-match CKA lower inside the block (90% jackknife interval of the difference below 0)",
                      None if not rows else all(ok), "; ".join(rows) or "no architecture pair with a block"))

    # C5: accuracy-matched wide vs deep
    wd = summary["outputs"]["wide_vs_deep"]
    if wd is None or wd["over_seeds"] is None:
        why = "no fitted wide/deep pair" if wd is None else (
            f"{wd['wide']} vs {wd['deep']}: {len(wd['cross_disagreements'])} cross pair(s), "
            f"{len(wd['seed_disagreements'])} seed pair(s); needs >= 2 of each")
        out.append(_claim("c5_wide_deep", "C5: wide and deep models disagree more than seeds.",
                          "accuracy-matched pair; cross-architecture disagreement above seed-to-seed over seeds "
                          "(Welch, 90%)", None, why + "."))
    else:
        o = wd["over_seeds"]
        out.append(_claim(
            "c5_wide_deep", "C5: wide and deep models disagree more than seeds.",
            "accuracy-matched pair; cross-architecture disagreement above seed-to-seed over seeds (Welch, 90%)",
            bool(o["differs"] and o["difference"] > 0),
            f"{wd['wide']} (acc {wd['accuracy_wide']:.3f}) vs {wd['deep']} (acc {wd['accuracy_deep']:.3f}), "
            f"mean accuracy gap {wd['accuracy_gap']:.3f}; cross disagreements "
            f"{', '.join(_fmt(v) for v in wd['cross_disagreements'])} vs seed pairs "
            f"{', '.join(_fmt(v) for v in wd['seed_disagreements'])}: difference {_fmt(o['difference'])} "
            f"[{_fmt(o['ci'][0])}, {_fmt(o['ci'][1])}], p = {_fmt(o['p'], '.3g')}; "
            f"{wd['n_classes_significant']} class(es) differ (exact McNemar, Holm)"))

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
