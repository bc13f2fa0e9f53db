"""Per-layer activation statistics of a PyTorch model through forward hooks.

One forward pass of a set of examples; each hooked layer is reduced inside its hook (its
first principal component: variance share, scores, dominant examples), so only one layer's
activations are alive at a time and a 300-layer network needs the memory of one layer.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from .. import _validation as V
from ..pcs import dominant_examples
from .torch import select_layers, unwrap_model


def layer_statistics(model, x, layers=None, *, top=10, device=None):
    """PC1 share, PC1 scores and dominant examples of every selected layer, in one forward.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode under ``torch.no_grad()`` (its training mode is restored after).
    x : torch.Tensor or numpy.ndarray, shape (n, ...)
        The examples, passed to ``model`` in one batch (``n >= 2``).
    layers : as in :func:`repsim.select_layers`, optional
        Default: every leaf module.
    top : int, default 10
        Dominant examples kept per layer (``1 <= top <= n``).
    device : torch.device or str, optional
        Where to run; default: where the model's parameters are.

    Returns
    -------
    xarray.Dataset
        ``pc1_share`` (layer): PC1's share of the layer's variance (outputs flattened to
        ``(n, features)``, centred); ``pc1_scores`` (layer, example): each example's
        projection on the layer's PC1 (sign arbitrary); ``dominant`` (layer, rank): the
        ``top`` examples with the largest ``|score|``, largest first; ``dominant_share``
        (layer): their share of PC1's variance. attrs ``n_examples``, ``top``.

    Raises
    ------
    ValueError
        A layer that does not run, runs twice, or returns something other than one tensor
        with ``n`` rows, named with its shape.

    See Also
    --------
    repsim.dominant_examples, repsim.pc_variance_fraction, repsim.pc1_runs

    Examples
    --------
    >>> import torch, repsim
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> stats = repsim.layer_statistics(net, torch.randn(20, 4), ["0", "2"], top=3)
    >>> stats["pc1_share"].dims, stats["dominant"].shape
    (('layer',), (2, 3))
    """
    inner = unwrap_model(model)
    names = select_layers(inner, layers)
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"x must hold at least 2 examples along its first axis; got shape {tuple(x.shape)}")
    n = int(x.shape[0])
    top = V.check_int(top, "top", 1, n, f" (at most the {n} examples)")
    if device is None:
        p = next(inner.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    found = {}

    def hook(name):
        def fn(module, inputs, output):
            if name in found:
                raise ValueError(f"layer {name!r} ran more than once in one forward; hook a module that runs once")
            if not isinstance(output, torch.Tensor) or output.ndim < 1 or output.shape[0] != n:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(f"layer {name!r} must return one tensor with n={n} rows; got {shape}")
            found[name] = dominant_examples(output.detach().flatten(1).float(), top=top)
        return fn

    handles = [inner.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(f"layers {missing[:5]} did not run in the forward; select layers on the forward path")
    stats = [found[name] for name in names]
    return xr.Dataset(
        {
            "pc1_share": ("layer", np.array([float(s.pc1_fraction) for s in stats])),
            "pc1_scores": (("layer", "example"), np.stack([np.asarray(s.scores, dtype=np.float64) for s in stats])),
            "dominant": (("layer", "rank"), np.stack([np.asarray(s.indices, dtype=np.int64) for s in stats])),
            "dominant_share": ("layer", np.array([float(s.share) for s in stats])),
        },
        coords={"layer": list(names)},
        attrs={"n_examples": n, "top": top},
    )
