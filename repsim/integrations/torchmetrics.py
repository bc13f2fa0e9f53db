"""Minibatch CKA as a ``torchmetrics.Metric``: the accumulator's declared sum states,
registered with ``add_state(..., dist_reduce_fx="sum")``, so that torchmetrics resets,
syncs (across processes), checkpoints and moves them like any metric's.

Requires ``torchmetrics`` (``pip install "repsim-cka[integrations]"``); ``import repsim``
does not import it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torchmetrics import Metric

from ..streaming import MinibatchCKA

__all__ = ["MinibatchCKAMetric"]


def _layer_names(layers: Any, label: str) -> list[str]:
    if isinstance(layers, int) and not isinstance(layers, bool):
        if layers < 1:
            raise ValueError(f"{label} must be >= 1 layers; got {layers}")
        return [str(i) for i in range(layers)]
    if isinstance(layers, (list, tuple)) and layers:
        return [str(v) for v in layers]
    raise TypeError(f"{label} must be a number of layers or a non-empty list of layer names "
                    f"(the keys of the dicts given to update); got {layers!r}")


class MinibatchCKAMetric(Metric):
    """Minibatch CKA between every pair of layers, as a torchmetrics metric.

    The states are exactly :class:`repsim.MinibatchCKA`'s declared sum states (``sum_ab``,
    ``sum_aa``, ``sum_bb``, the centred traces and tolerances that flag constant layers,
    ``n_batches``, ``n_examples``), each registered with ``dist_reduce_fx="sum"``; every
    update adds one batch's terms into them through the accumulator's own update, so the
    metric equals :class:`repsim.MinibatchCKA` over the same batches, and torchmetrics'
    ``sync`` (all-gather, then sum) equals its all-reduce. Because the states' shapes are
    fixed at construction, the layers are named up front.

    Parameters
    ----------
    layers_a : int or list of str
        The layers of model A, in order: the keys of the dicts given to :meth:`update`
        (or their number, for sequences of arrays, named ``"0", "1", ...``).
    layers_b : int or list of str, optional
        Model B's layers; None (default): within-model CKA of ``layers_a`` (symmetric,
        :meth:`update` takes ``acts_a`` only).
    kernel, estimator, sigma, transform, weighting, precision
        As in :class:`repsim.MinibatchCKA`. ``kernel="rbf"`` needs a fixed ``sigma``:
        a bandwidth calibrated on each process's first batch would differ between
        processes and could not be summed.
    **kwargs
        Options of :class:`torchmetrics.Metric` (``sync_on_compute``,
        ``dist_sync_on_step``, ``process_group``, ``dist_sync_fn``, ...).

    Notes
    -----
    :meth:`compute` returns a float64 tensor ``(L_a, L_b)`` (NaN for constant layers);
    :meth:`to_accumulator` gives a :class:`repsim.MinibatchCKA` holding the same states
    (for its labelled :meth:`~repsim.MinibatchCKA.compute`, ``merge`` or
    ``state_dict``); under ``torch.distributed`` call it inside ``metric.sync_context()``
    for the sums of all processes. Per-group sums (``groups=``, for intervals) are not
    offered: ``forward`` computes each batch from reset states, so a round-robin group
    could not be told.

    Examples
    --------
    >>> import torch
    >>> from repsim.integrations.torchmetrics import MinibatchCKAMetric
    >>> metric = MinibatchCKAMetric(["x", "y"])
    >>> g = torch.Generator().manual_seed(0)
    >>> for _ in range(3):
    ...     x = torch.randn(16, 8, generator=g)
    ...     metric.update({"x": x, "y": x @ torch.randn(8, 4, generator=g)})
    >>> metric.compute().shape
    torch.Size([2, 2])
    >>> metric.to_accumulator().compute().layer_a.values.tolist()
    ['x', 'y']
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, layers_a: int | Sequence[str], layers_b: int | Sequence[str] | None = None,
                 *, kernel: str = "linear", estimator: str = "unbiased",
                 sigma: float | Mapping[str, float] | None = None,
                 transform: Callable[[Any], Any] | None = None, weighting: str = "pairs",
                 precision: str = "float32", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cka_options: dict[str, Any] = dict(kernel=kernel, estimator=estimator, sigma=sigma,
                                 transform=transform, weighting=weighting, precision=precision)
        acc = MinibatchCKA(**self._cka_options)  # validates the options
        if kernel == "rbf" and sigma is None:
            raise ValueError("kernel='rbf' needs a fixed sigma= here: a bandwidth calibrated "
                             "on each process's first batch would differ between processes")
        names_a = _layer_names(layers_a, "layers_a")
        names_b = names_a if layers_b is None else _layer_names(layers_b, "layers_b")
        layout = dict(names_a=names_a, names_b=names_b, symmetric=layers_b is None,
                      sigmas_a=acc._sigmas_for(names_a), sigmas_b=acc._sigmas_for(names_b))
        acc._check_layout(layout)
        self._acc, self._layout = acc, layout
        dims = acc._dims(layout)
        self._state_names = []
        for state in acc._declared():
            default = torch.zeros(acc._shape(state, dims), dtype=getattr(torch, state.dtype))
            self.add_state(state.name, default=default, dist_reduce_fx="sum")
            self._state_names.append(state.name)

    def _bound(self) -> MinibatchCKA:
        """The accumulator with its layout fixed and its states *being* this metric's
        tensors (torchmetrics replaces them on reset and sync, so bound anew each call)."""
        acc = self._acc
        for key, value in self._layout.items():
            setattr(acc, key, value)
        values = {name: getattr(self, name) for name in self._state_names}
        wrong = [n for n, v in values.items() if v.dtype not in (torch.float64, torch.int64)]
        if wrong:
            raise TypeError(f"the states {wrong} lost their float64/int64 dtype (set_dtype?); "
                            "the sums must stay exact")
        acc._values = values
        return acc

    def update(self, acts_a: Sequence[Any] | Mapping[str, Any],
               acts_b: Sequence[Any] | Mapping[str, Any] | None = None) -> None:
        """Add one batch (as :meth:`repsim.MinibatchCKA.update`): torch tensors on the
        metric's device, one ``(n, ...)`` tensor per layer, the layers named at
        construction; ``acts_b`` exactly when ``layers_b`` was given."""
        self._bound().update(acts_a, acts_b)

    def compute(self) -> torch.Tensor:
        """CKA of every pair of layers from the batches so far, float64 ``(L_a, L_b)``."""
        result = self._bound().compute()
        device = getattr(self, self._state_names[0]).device
        return torch.as_tensor(result.values, dtype=torch.float64, device=device)

    def to_accumulator(self) -> MinibatchCKA:
        """A :class:`repsim.MinibatchCKA` holding a copy of the current states."""
        acc = MinibatchCKA(**self._cka_options)
        acc.load_state_dict(self._bound().state_dict())
        return acc
