"""The paper's figure analogues: heatmap series over depth, over width, and a data fraction
x capacity grid, and the depth curve of C1 (Nguyen, Raghu & Kornblith 2021, figures 1-3).

Each series shows one model per point: the lowest fitted seed (seed 0 when it fits), else
the lowest seed, marked "NOT FIT". Recipe checks are left out (they are no points of a
series). A figure is drawn only when the run has at least two points on its axis. The
declared block is outlined in cyan, as in every heatmap of the report.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .analyse import main_fraction
from .config import standard
from .growth import contrast


def _plt():
    import matplotlib

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _heat(ax, values, title, block=None):
    im = ax.imshow(values, origin="lower", cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
    if block is not None:
        f, l = block["first"] - 0.5, block["last"] + 0.5
        ax.plot([f, l, l, f, f], [f, f, l, l, f], color="cyan", lw=0.8)
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _save(fig, path: Path, plt) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return f"figures/{path.name}"


def _name(depth, width):
    return f"ResNet-{depth}" + ("" if width == 1 else f"x{width}")


def shown(models, depth, width, fraction):
    """The model a series shows at one point: the lowest fitted seed, else the lowest seed
    (None when the point has no model)."""
    at = sorted((m for m in models if (m["depth"], m["width"], m["train_fraction"]) == (depth, width, fraction)),
                key=lambda m: (not m["fits"], m["seed"]))
    return at[0] if at else None


def _title(m, head):
    block = "no block" if m["block"] is None else f"block {m['block']['first']}-{m['block']['last']}"
    fit = "" if m["fits"] else " NOT FIT"
    return f"{head}, seed {m['seed']}{fit}\n{block} of {m['n_layers']} layers"


def _row(plt, extracts, cells, suptitle):
    """One row of heatmaps ``[(model, head)]`` with a colour bar."""
    fig, axes = plt.subplots(1, len(cells), figsize=(2.1 * len(cells) + 0.8, 2.5), squeeze=False,
                             constrained_layout=True)
    for ax, (m, head) in zip(axes[0], cells):
        im = _heat(ax, extracts[m["id"]]["cka"].values, _title(m, head), m["block"])
    fig.colorbar(im, ax=axes, shrink=0.8, label="minibatch CKA")
    fig.suptitle(suptitle, fontsize=9)
    return fig


def depth_series(extracts, summary, plt):
    """Heatmaps left to right by depth at width 1 on the main training fraction; None with
    fewer than two depths."""
    models = standard(summary["models"])
    top = main_fraction(models)
    depths = sorted({m["depth"] for m in models if m["width"] == 1 and m["train_fraction"] == top})
    if len(depths) < 2:
        return None
    cells = [(shown(models, d, 1, top), _name(d, 1)) for d in depths]
    return _row(plt, extracts, cells, f"Depth series: width 1, {top:g} of the training data")


def width_series(extracts, summary, plt):
    """Heatmaps left to right by width at the depth with the most widths (ties: the
    shallowest) on the main training fraction; None with fewer than two widths."""
    models = standard(summary["models"])
    top = main_fraction(models)
    widths = {}
    for m in models:
        if m["train_fraction"] == top:
            widths.setdefault(m["depth"], set()).add(m["width"])
    depth = min(widths, key=lambda d: (-len(widths[d]), d))
    if len(widths[depth]) < 2:
        return None
    cells = [(shown(models, depth, w, top), _name(depth, w)) for w in sorted(widths[depth])]
    return _row(plt, extracts, cells, f"Width series: depth {depth}, {top:g} of the training data")


def fraction_grid(extracts, summary, plt):
    """Rows: training fractions (largest first); columns: the architectures trained on at
    least two of them (by capacity, depth x width^2). None with fewer than two fractions."""
    models = standard(summary["models"])
    fractions = sorted({m["train_fraction"] for m in models}, reverse=True)
    archs = {}
    for m in models:
        archs.setdefault((m["depth"], m["width"]), set()).add(m["train_fraction"])
    cols = sorted((a for a, f in archs.items() if len(f) >= 2), key=lambda a: (a[0] * a[1] ** 2, a[0]))
    if len(fractions) < 2 or not cols:
        return None
    fig, axes = plt.subplots(len(fractions), len(cols), figsize=(2.1 * len(cols) + 0.8, 2.4 * len(fractions)),
                             squeeze=False, constrained_layout=True)
    im = None
    for i, f in enumerate(fractions):
        for j, (d, w) in enumerate(cols):
            m = shown(models, d, w, f)
            if m is None:
                axes[i, j].axis("off")
                continue
            im = _heat(axes[i, j], extracts[m["id"]]["cka"].values, _title(m, f"{_name(d, w)}, {f:g} data"),
                       m["block"])
    fig.colorbar(im, ax=axes, shrink=0.8, label="minibatch CKA")
    fig.suptitle("Training fraction (rows) x capacity (columns)", fontsize=9)
    return fig


def depth_curve(summary, plt):
    """Local contrast and PC1 max against depth (width 1, main fraction): every seed a
    dot (open: not fitted), the mean over fitted seeds a line. None with fewer than two
    depths."""
    models = standard(summary["models"])
    top = main_fraction(models)
    series = [m for m in models if m["width"] == 1 and m["train_fraction"] == top]
    depths = sorted({m["depth"] for m in series})
    if len(depths) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), constrained_layout=True)
    for ax, (label, value) in zip(axes, (("local contrast (declared block, or the sharpest run)", contrast),
                                         ("PC1 max (largest share of variance in PC1)", lambda m: m["pc1_max"]))):
        for m in series:
            v = value(m)
            if v is not None:
                ax.scatter(m["depth"], v, s=18, color="C0", facecolors="C0" if m["fits"] else "none", zorder=3)
        means = [(d, np.mean([value(m) for m in series if m["depth"] == d and m["fits"] and value(m) is not None]))
                 for d in depths if any(m["depth"] == d and m["fits"] and value(m) is not None for m in series)]
        if means:
            ax.plot(*zip(*means), color="C0", lw=1, marker="_", ms=12, label="mean over fitted seeds")
        ax.set_xlabel("depth")
        ax.set_xticks(depths)
        ax.set_title(label, fontsize=8)
    threshold = summary["config"]["block_min_contrast"]
    axes[0].axhline(threshold, color="k", ls="--", lw=0.8, label=f"declared min. {threshold:g}")
    axes[0].legend(fontsize=6, loc="best", title="open: not fitted", title_fontsize=6)
    axes[1].set_ylim(0, 1)
    fig.suptitle(f"Does the block grow with depth? (width 1, {top:g} of the training data)", fontsize=9)
    return fig


def series_figures(extracts, summary, fig_dir: Path) -> dict:
    """Draw the series figures the run has points for; returns ``{name: relative path}``."""
    plt = _plt()
    figs = {}
    for name, fig in (("depth_series", depth_series(extracts, summary, plt)),
                      ("width_series", width_series(extracts, summary, plt)),
                      ("fraction_grid", fraction_grid(extracts, summary, plt)),
                      ("depth_curve", depth_curve(summary, plt))):
        if fig is not None:
            figs[name] = _save(fig, fig_dir / f"{name}.png", plt)
    return figs
