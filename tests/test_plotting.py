"""Heatmaps and grids: the image's content and orientation, fixed colour limits, block
outlines, one shared colour bar, and matplotlib imported only when plotting."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import repsim  # noqa: E402
from repsim.results import similarity_array  # noqa: E402


def _sim(n=10, blocks=((2, 6),), names=None):
    values = np.full((n, n), 0.2)
    for first, last in blocks:
        values[first:last + 1, first:last + 1] = 0.95
    values[np.arange(n), np.arange(n)] = 1.0
    values[0, 1] = values[1, 0] = 0.5  # a marker to check the orientation
    names = names or [f"layer{i}" for i in range(n)]
    return similarity_array(values, names, names, {"measure": "cka"})


def test_heatmap_content_orientation_and_colour_scale():
    sim = _sim()
    ax = repsim.plot_similarity(sim)
    image = ax.images[0]
    np.testing.assert_array_equal(np.asarray(image.get_array()), sim.values)
    assert image.get_clim() == (0.0, 1.0)
    assert image.origin == "upper"
    # layer 0 top left: the y axis runs downwards from -0.5 to n - 0.5
    assert ax.get_ylim() == (9.5, -0.5) and ax.get_xlim() == (-0.5, 9.5)
    # the rendered pixels: the marker at (0, 1) sits in the top row
    ax.figure.canvas.draw()
    rgba = image.to_rgba(np.asarray(image.get_array()))
    assert np.allclose(rgba[0, 1], image.cmap(image.norm(0.5)))
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["layer0", "layer1"]
    assert ax.get_ylabel() == "layer_a" and ax.get_xlabel() == "layer_b"
    assert ax.get_title() == "cka"
    assert len(ax.figure.axes) == 2  # heatmap and its colour bar
    assert len(ax.patches) == 0


def test_colour_scale_is_fixed_whatever_the_values():
    low = similarity_array(np.full((4, 4), 0.1), list("abcd"), list("abcd"))
    ax = repsim.plot_similarity(low, colorbar=False)
    assert ax.images[0].get_clim() == (0.0, 1.0)
    assert len(ax.figure.axes) == 1
    ax = repsim.plot_similarity(low, vmin=0.05, vmax=0.2, colorbar=False, title="zoom")
    assert ax.images[0].get_clim() == (0.05, 0.2) and ax.get_title() == "zoom"


def test_block_outlines():
    sim = _sim(12, blocks=((1, 4), (7, 10)))
    ax = repsim.plot_similarity(sim, blocks=True)
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(rects) == 2
    assert rects[0].get_xy() == (0.5, 0.5) and rects[0].get_width() == 4
    assert rects[1].get_xy() == (6.5, 6.5) and rects[1].get_height() == 4
    assert not rects[0].get_fill()
    # a table from block_structure, explicit pairs, detection options
    table = repsim.block_structure(sim)
    assert len(repsim.plot_similarity(sim, blocks=table).patches) == 2
    assert len(repsim.plot_similarity(sim, blocks=[(0, 11)]).patches) == 1
    assert len(repsim.plot_similarity(sim, blocks=True, block_kw={"min_size": 5}).patches) == 0
    with pytest.raises(ValueError, match="blocks"):
        repsim.plot_similarity(sim, blocks=[(1, 2, 3)])


def test_bare_arrays_nan_and_given_axes():
    torch = pytest.importorskip("torch")
    values = np.eye(5)
    values[2, :] = values[:, 2] = np.nan
    fig, ax = plt.subplots()
    out = repsim.plot_similarity(torch.from_numpy(values), ax=ax, colorbar=False)
    assert out is ax
    data = ax.images[0].get_array()
    assert np.ma.isMaskedArray(data) and data.mask[2].all() and not data.mask[0, 0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3", "4"]
    with pytest.raises(ValueError, match="2-d"):
        repsim.plot_similarity(np.ones(3))


def test_many_layers_get_thinned_ticks():
    ax = repsim.plot_similarity(_sim(60, blocks=()), max_ticks=10, colorbar=False)
    assert len(ax.get_yticks()) <= 10


def test_grid_shares_one_colour_bar():
    results = {"narrow": _sim(), "wide": _sim(blocks=((1, 8),)), "deep": _sim(14, blocks=())}
    fig, axes = repsim.plot_similarity_grid(results, ncols=2, blocks=True)
    assert axes.shape == (2, 2)
    panels = [ax for ax in axes.flat if ax.images]
    assert [ax.get_title() for ax in panels] == ["narrow", "wide", "deep"]
    assert all(ax.images[0].get_clim() == (0.0, 1.0) for ax in panels)
    assert not axes[1, 1].axison  # the unused panel is switched off
    colorbars = [ax for ax in fig.axes if ax not in list(axes.flat)]
    assert len(colorbars) == 1 and colorbars[0].get_ylabel() == "similarity"
    assert [len(ax.patches) for ax in panels] == [1, 1, 0]
    fig, axes = repsim.plot_similarity_grid([_sim(), _sim()])
    assert axes.shape == (1, 2) and [ax.get_title() for ax in axes.flat] == ["0", "1"]
    with pytest.raises(ValueError, match="at least one"):
        repsim.plot_similarity_grid({})
    with pytest.raises(ValueError, match="ncols"):
        repsim.plot_similarity_grid([_sim()], ncols=0)


def test_matplotlib_is_imported_only_when_plotting():
    code = (
        "import sys, repsim\n"
        "assert 'matplotlib' not in sys.modules\n"
        "f = repsim.plot_similarity\n"
        "assert 'matplotlib' not in sys.modules\n"
        "import numpy as np\n"
        "f(np.eye(3))\n"
        "assert 'matplotlib' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, MPLBACKEND="Agg"), timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_docstring_examples_run():
    import doctest

    import repsim.plotting as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
