"""The mechanism stage in the report: the dominant-image figure and the "Mechanism" section.

Reads only ``summary.json``'s ``mechanism`` entries (per model and the run's
``mechanism`` key), so ``--from-summary`` rewrites the section from a stored summary and a
summary without them (runs before issue 24, section 3) gets no section.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .claims import _fmt

CAPTION = ("The dominant examples of each model with a declared block: the held-out images with the largest "
           "|PC1 score| at the block's middle layer, largest first (the images the follow-up removes); "
           "each image min-max scaled for display")


def dominant_figure(models, extracts, data, out: Path, top=10) -> str | None:
    """``figures/dominant_images.png``: per model with a block, its ``top`` dominant images
    with their labels; None when no model has a block."""
    from .report import _plt, _save

    chosen = [m for m in models if m["block"] is not None]
    if not chosen:
        return None
    plt = _plt()
    cols = min(top, max(len(np.atleast_1d(extracts[m["id"]].attrs["dominant_removed"])) for m in chosen))
    fig, axes = plt.subplots(len(chosen), cols, figsize=(1.1 * cols + 0.4, 1.35 * len(chosen) + 0.3),
                             squeeze=False, constrained_layout=True)
    for i, m in enumerate(chosen):
        idx = np.atleast_1d(extracts[m["id"]].attrs["dominant_removed"])[:cols]
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(idx):
                ax.axis("off")
                continue
            img = np.asarray(data["x_eval"][int(idx[j])], dtype=np.float64)
            img = (img - img.min()) / (np.ptp(img) or 1.0)
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", interpolation="nearest")
            else:
                ax.imshow(np.transpose(img, (1, 2, 0)), interpolation="nearest")
            ax.set_title(f"#{int(idx[j])} {data['classes'][int(data['y_eval'][int(idx[j])])]}", fontsize=6)
        axes[i, 0].set_ylabel(f"{m['id']}\n{extracts[m['id']].attrs['dominant_layer']}", fontsize=6)
    return _save(fig, out / "figures" / "dominant_images.png", plt)


def _count(rows, test) -> str:
    hit = [r for r in rows if test(r)]
    return f"{len(hit)} of {len(rows)}"


def _span_text(s) -> str:
    return "—" if s is None else f"{s['first']}-{s['last']} ({'block' if s['kind'] == 'block' else 'window'})"


def mechanism_lines(summary) -> list[str]:
    """The report's "Mechanism" section (empty when the summary has no mechanism entries)."""
    models = [m for m in summary["models"] if m.get("mechanism")]
    if not models:
        return []
    cfg = summary["config"]
    mech = summary.get("mechanism", {})
    blocks = [m for m in models if m["block"] is not None and m["fits"]]
    free = [m for m in models if m["block"] is None and m["fits"] and m["mechanism"]["span"] is not None]
    ks = [r["k"] for r in models[0]["mechanism"]["pc_removal"]]
    L = ["## Mechanism\n",
         f"From the stored models on the {summary['n_eval']} held-out images (`examples/wide_deep/mechanism.py`). "
         "The span is each model's declared block; in a model without one, the layers at the blocks' relative "
         f"depth (window {summary.get('control_window')}, at least two layers): a block-free control. Counts are "
         "over fitted models; with this few seeds they describe models, not architectures.\n",
         "| model | span | local contrast (inside) after removing the top k PCs per batch, k = "
         + ", ".join(map(str, ks)) + " (0: none, the same batches) | dissolves at k | branch / stream norm: in / out (out, same stage) "
         "| bn2 mean abs gamma: in / out (same stage) | probe accuracy: first → last of span (gain; 2 SE) |",
         "|---|---|---|---|---|---|---|"]
    for m in models:
        e = m["mechanism"]
        pcs = "; ".join(f"{_fmt(r.get('local_contrast'))} ({_fmt(r.get('inside'))})" for r in e["pc_removal"])
        r, p = e["residual"], e["probe"]
        res = (f"{_fmt(r.get('branch_ratio_in'))} / {_fmt(r.get('branch_ratio_out'))} "
               f"({_fmt(r.get('branch_ratio_out_same_stage'))})")
        gam = (f"{_fmt(r.get('bn2_gamma_in'))} / {_fmt(r.get('bn2_gamma_out'))} "
               f"({_fmt(r.get('bn2_gamma_out_same_stage'))})")
        probe = "—" if "first" not in p else (f"{_fmt(p['first'])} → {_fmt(p['last'])} ({_fmt(p['gain_in'])}; "
                                              f"{_fmt(2 * p['se_difference'])})")
        dis = "—" if m["block"] is None else (str(e["dissolves_at_k"]) if e["dissolves_at_k"] else f"> {ks[-1]}")
        L.append(f"| {m['id']}{'' if m['fits'] else ' (not fitted)'} | {_span_text(e['span'])} | {pcs} | {dis} | "
                 f"{res} | {gam} | {probe} |")
    L.append("")
    L.append(f"- **Top-k PC removal.** Per batch, every layer's top k principal components removed "
             f"(the grams of `repsim.remove_top_pcs`), every k on the same batches as k = 0; the block "
             f"dissolves at k when its own layers fall below the declared thresholds (inside "
             f"{cfg['block_min_inside']}, local contrast {cfg['block_min_contrast']}). "
             + ("; ".join(_dissolve_text(m, ks[-1]) for m in blocks) or "No fitted model has a block.")
             + ". Shows: how many of each layer's leading directions carry the block's contrast. Does not show: "
             "which examples or features they are, nor that the same directions are removed in every batch.")
    if blocks:
        L.append(f"- **Residual branches.** The branch / stream norm ratio ‖F(x)‖ / ‖s(x)‖ at each block's sum "
                 f"(mean over images; identity-shortcut blocks) is lower inside the block than in the rest of its "
                 f"stages in {_lower(blocks)} fitted models with a block whose stages go on beyond it; "
                 + "; ".join(f"{m['id']}: {_fmt(m['mechanism']['residual']['branch_ratio_in'])} in vs "
                             f"{_fmt(m['mechanism']['residual']['branch_ratio_out_same_stage'])} (same stage), "
                             f"bn2 mean abs gamma {_fmt(m['mechanism']['residual']['bn2_gamma_in'])} vs "
                             f"{_fmt(m['mechanism']['residual']['bn2_gamma_out_same_stage'])}" for m in blocks)
                 + (f"; in the block-free models' window: {_lower(free)}" if free else "")
                 + ". Shows: whether the block's layers change the stream less than their neighbours (quiet "
                 "branches alone make consecutive layers similar). Does not show: why training silenced them, or "
                 "that a ratio near the neighbours' rules the mechanism out (the direction of F(x) matters too).")
        flat = _count(blocks, lambda m: m["mechanism"]["probe"].get("flat", False))
        probe = blocks[0]["mechanism"]["probe"]
        L.append(f"- **Linear probes.** A ridge classifier (penalty {_fmt(probe['ridge'], 'g')}) on each layer's "
                 f"spatially mean-pooled, standardised outputs, fitted on {probe['n_fit']} of the held-out images "
                 f"and scored on the other {probe['n_score']}. Accuracy is flat across the block (|last − first| "
                 f"≤ 2 SE of an unpaired difference) in {flat}; "
                 + "; ".join(f"{m['id']}: {_fmt(m['mechanism']['probe']['first'])} → "
                             f"{_fmt(m['mechanism']['probe']['last'])}, per layer "
                             f"{_fmt(m['mechanism']['probe']['gain_per_layer_in'])} inside vs "
                             f"{_fmt(m['mechanism']['probe']['gain_per_layer_out'])} outside" for m in blocks)
                 + ". Shows: whether the block adds linearly decodable class information. Does not show: "
                 "non-linear or spatially arranged information (the pooling discards position).")
    pairs = [p for p in mech.get("dominant_overlap", []) if p["both_block"]]
    if pairs:
        L.append("- **Dominant images across seeds** (the images: the figure below). "
                 + "; ".join(f"{p['model_a']} / {p['model_b']}: {p['intersection']} of {p['k']} shared, Jaccard "
                             f"{_fmt(p['jaccard'])} against {_fmt(p['expected_jaccard'])} by chance "
                             f"({_fmt(p['expected_intersection'], '.2f')} shared expected; hypergeometric "
                             f"P(≥ {p['intersection']}) = {_fmt(p['p'], '.3g')})" for p in pairs)
                 + ". Shows: whether seeds single out the same images. Does not show: whether they single out the "
                 "same kind of image (classes, colours) when the images differ.")
    ctrl = [m for m in free if m["mechanism"].get("dominant_control")]
    if ctrl:
        beats = _count(ctrl, lambda m: m["mechanism"]["dominant_control"]["beats_p95"])
        L.append(f"- **Dominant-example removal in block-free models**, at the blocks' relative depth: the drop in "
                 f"local contrast beats the random removals' 95th percentile in {beats}; "
                 + "; ".join(f"{m['id']} (layers {c['first']}-{c['last']}): drop {_fmt(c['dominant_drop'])} vs random "
                             f"95th percentile {_fmt(c['random_drop_p95'])}"
                             for m in ctrl for c in [m["mechanism"]["dominant_control"]])
                 + ". Shows: whether the follow-up's effect is specific to the block (the block-bearing models' "
                 "numbers are in the follow-up claim). Does not show: anything where the window's layers have no "
                 "contrast to lose.")
    L.append("")
    return L


def _dissolve_text(m, last_k) -> str:
    e = m["mechanism"]
    verdict = f"dissolves at k = {e['dissolves_at_k']}" if e["dissolves_at_k"] else f"stands through k = {last_k}"
    return (f"{m['id']}: {verdict} (local contrast, k = 0 → {e['pc_removal'][-1]['k']}: "
            + " → ".join(_fmt(r.get("local_contrast")) for r in e["pc_removal"]) + ")")


def _lower(models, key="branch_ratio") -> str:
    """"a of b": models whose ``key`` is lower inside the span than in the rest of its
    stages, of those where both sides exist."""
    both = [m["mechanism"]["residual"] for m in models]
    both = [r for r in both if r.get(f"{key}_in") is not None and r.get(f"{key}_out_same_stage") is not None]
    return _count(both, lambda r: r[f"{key}_in"] < r[f"{key}_out_same_stage"])
