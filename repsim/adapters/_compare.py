"""The driver of the PyTorch adapter: :func:`compare_models`.

:func:`compare_models` reads its options (grouped in ``_options``), and hands each step to
one helper: :func:`_make_accumulator` (the accumulator the batches go into),
:func:`_models` (the models compared, on their device), :func:`_build_sides` (the hooks
and which layers go to each side), :func:`_open_checkpoint` (what identifies the run, where
it resumes), :func:`_stream` (every batch through the hooks into the accumulator) and
:func:`_provenance` (the result's attrs). Running one batch and the epoch, shard and
resume decisions live in ``_batches``. The accumulator is used through its base's
interface only (``update_grams``/``update_features``, ``compute``, ``state_dict``/
``load_state_dict``, ``sync``).
"""

from __future__ import annotations

import collections.abc
import contextlib
import inspect
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .._accumulator import Accumulator
from .._io import progress as _progress_display
from ..streaming import MinibatchCKA
from ._batches import _batches, _inference, _model_device, _run_forward
from ._checkpoint import (
    checkpoint_config,
    load_checkpoint,
    option_identity,
    rank_path,
    save_checkpoint,
)
from ._distributed import _dist_context, _presharded, all_reduce_accumulator
from ._hooks import GramHooks
from ._options import (
    CaptureOptions,
    RunOptions,
    StatisticsOptions,
    changed,
    resolve_options,
)
from ._selection import LayerSpec, select_layers, unwrap_model


@dataclass
class _Models:
    """The models compared (unwrapped), whether they are one, their device and names."""

    a: nn.Module
    b: nn.Module
    within: bool
    device: torch.device
    names: tuple[str, str]

    @property
    def distinct(self) -> list[nn.Module]:
        return [self.a] if self.within else [self.a, self.b]


def _models(model_a, model_b, device, names) -> _Models:
    """Unwrap the models, move them to ``device`` (``.to`` acts in place), name them."""
    inner_a = unwrap_model(model_a)
    within = model_b is None or model_b is model_a or unwrap_model(model_b) is inner_a
    inner_b = inner_a if within else unwrap_model(model_b)
    dev = _model_device(inner_a, device)
    if device is not None:
        inner_a.to(dev)
        inner_b.to(dev)
    labels = tuple(names) if names is not None else (type(inner_a).__name__,
                                                     type(inner_b).__name__)
    if len(labels) != 2:
        raise ValueError(f"names must be two strings (model_a, model_b); got {names!r}")
    return _Models(inner_a, inner_b, within, dev, (labels[0], labels[1]))


def _make_accumulator(estimator, precision, statistics: StatisticsOptions, run: RunOptions,
                      world: int) -> Any:
    """A MinibatchCKA built from the options, or the caller's fresh accumulator (used
    through ``update_grams``/``update_features``, ``compute`` and ``n_batches``, which
    :class:`~repsim._accumulator.Accumulator` does not declare)."""
    acc: Accumulator
    if run.accumulator is None:
        acc = MinibatchCKA(estimator=estimator, precision=precision, kernel=statistics.kernel,
                           sigma=statistics.sigma, threshold=statistics.threshold,
                           engine=run.engine, groups=statistics.groups,
                           weighting=statistics.weighting)  # checks estimator and precision
    else:
        clash = [k for k, v, default in (("estimator", estimator, "unbiased"),
                                         ("precision", precision, "float32")) if v != default]
        clash += [f"StatisticsOptions.{k}" for k in changed(statistics, ignore=("level",))]
        if clash:
            raise ValueError(f"pass either RunOptions.accumulator or {clash}, not both (set "
                             "them on the accumulator)")
        if run.accumulator.started:
            raise ValueError("accumulator must be fresh (no batches yet); call reset() first")
        acc = run.accumulator
    if world > 1 and getattr(acc, "kernel", None) == "rbf" and getattr(acc, "sigma", 1) is None:
        raise ValueError(
            "kernel='rbf' under torch.distributed needs an explicit sigma (each process "
            "would calibrate the bandwidth on a different batch)"
        )
    return acc


@dataclass
class _Sides:
    """The hooks of a comparison and which of their layers go to each side."""

    hooks_a: GramHooks
    hooks_b: GramHooks | None
    names_a: list
    names_b: list
    symmetric: bool

    @property
    def managers(self) -> list[GramHooks]:
        return [self.hooks_a] + ([self.hooks_b] if self.hooks_b is not None else [])

    def grams(self):
        """(grams_a, grams_b) of the last forward pass(es); grams_b None if symmetric."""
        out = lambda h: h.activations if h.features else h.grams  # noqa: E731
        ga = out(self.hooks_a)
        if self.hooks_b is not None:
            return ga, out(self.hooks_b)
        if self.symmetric:
            return ga, None
        base = lambda key: key.rsplit(":", 1)[0] if self.hooks_a.repeated == "index" else key  # noqa: E731
        return ({k: v for k, v in ga.items() if base(k) in self.names_a},
                {k: v for k, v in ga.items() if base(k) in self.names_b})


def _built_sides(models: _Models, hooks, layers_a, layers_b, features, precision) -> _Sides:
    """The sides of hooks built by the caller, checked against the models and accumulator."""
    pair = hooks if isinstance(hooks, tuple) else (hooks,)
    if layers_a is not None or layers_b is not None:
        raise ValueError("pass either CaptureOptions.hooks or layers_a/layers_b, not both "
                         "(the hooks hold their layers)")
    if len(pair) != (1 if models.within else 2):
        raise TypeError("CaptureOptions.hooks must be a GramHooks for one model or a pair of "
                        f"GramHooks (model_a's, model_b's) for two; got {hooks!r}")
    if pair[0].model is not models.a or (not models.within and pair[1].model is not models.b):
        raise ValueError("hooks must be built on the models compared (model_a's first)")
    if any(h.features != features for h in pair):
        raise ValueError(f"hooks must be built with features={features} for this accumulator")
    if any(h.precision != precision for h in pair):
        raise ValueError(f"hooks must be built with precision={precision!r}, the accumulator's")
    if models.within:
        return _Sides(pair[0], None, pair[0].names, pair[0].names, True)
    return _Sides(pair[0], pair[1], pair[0].names, pair[1].names, False)


def _build_sides(models: _Models, capture: CaptureOptions, layers_a, layers_b, acc) -> _Sides:
    """Hooks for the selected layers, built so that the accumulator gets what it consumes."""
    features = acc.CONSUMES == "features"
    precision = getattr(acc, "precision", "float32")
    if capture.hooks is not None:
        return _built_sides(models, capture.hooks, layers_a, layers_b, features, precision)
    # MinibatchCKA centres every gram it is given in float64: the hooks leave it uncentred
    opts = dict(select=capture.select, pooling=capture.pooling, repeated=capture.repeated,
                transform=capture.transform, features=features, precision=precision,
                centred=not isinstance(acc, MinibatchCKA))
    if models.within:
        names_a = select_layers(models.a, layers_a)
        names_b = names_a if layers_b is None else select_layers(models.a, layers_b)
        union = list(OrderedDict.fromkeys(names_a + names_b))
        return _Sides(GramHooks(models.a, union, **opts), None, names_a, names_b,
                      names_b == names_a)
    ha, hb = GramHooks(models.a, layers_a, **opts), GramHooks(models.b, layers_b, **opts)
    return _Sides(ha, hb, ha.names, hb.names, False)


@dataclass
class _Checkpoint:
    """Where a run saves its state (``path`` None: nowhere) and where it starts."""

    path: str | None = None
    config: dict = field(default_factory=dict)
    start: tuple[int, int, int] = (0, 0, 0)

    def save(self, acc, epoch: int, batch: int, seen: int) -> None:
        if self.path is not None:
            save_checkpoint(self.path, acc, self.config, epoch, batch, seen)


def _open_checkpoint(run: RunOptions, models: _Models, sides: _Sides, forward, acc, rank,
                     world) -> _Checkpoint:
    """The run's checkpoint: its identity, and the state of an earlier run restored."""
    if run.checkpoint is None:
        return _Checkpoint()
    path = rank_path(run.checkpoint, rank, world)
    config = checkpoint_config(
        dict(model_a=models.names[0], model_b=models.names[1], layers_a=list(sides.names_a),
             layers_b=list(sides.names_b), symmetric=sides.symmetric, epochs=run.epochs,
             seed=run.seed, rank=rank, world_size=world),
        sides.managers, models.distinct, forward)
    start = load_checkpoint(path, acc, config, models.device) if os.path.exists(path) \
        else (0, 0, 0)
    return _Checkpoint(path, config, start)


def _stream(loader, acc, sides: _Sides, models: _Models, capture: CaptureOptions,
            run: RunOptions, ckpt: _Checkpoint, show: bool, rank: int, world: int) -> None:
    """Run this process's batches of every epoch through the hooks into ``acc``, with
    progress, group assignment and checkpoints; torch's RNG state is restored after."""
    try:
        total = run.epochs * len(loader)
    except TypeError:
        total = None
    start = ckpt.start
    initial = 0 if total is None else min(total, start[0] * (total // run.epochs) + start[1])
    bar = _progress_display(total=total, initial=initial, desc="compare_models", unit="batch",
                            enabled=bool(show) and rank == 0)
    sharded = world > 1 and not _presharded(loader)
    update = acc.update_features if acc.CONSUMES == "features" else acc.update_grams
    groups = getattr(acc, "groups", None)
    dev = models.device
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), contextlib.ExitStack() as stack:
            stack.enter_context(_inference(models.distinct, capture.eval_mode))
            for hk in sides.managers:
                stack.enter_context(hk)
            for step in _batches(loader, epochs=run.epochs, seed=run.seed, start=start,
                                 sharded=sharded, rank=rank, world=world):
                if step.index is None:  # end of an epoch
                    ckpt.save(acc, step.epoch + 1, 0, step.seen)
                    continue
                if step.mine:
                    if groups:  # same group as in a single process
                        acc.set_group((step.seen * world + rank if not sharded and world > 1
                                       else step.seen) % groups)
                    for hk, model in zip(sides.managers, (models.a, models.b)):
                        hk.start_pass()
                        _run_forward(model, step.batch, dev, capture.forward)
                    update(*sides.grams())
                bar.update(1)
                if (step.index + 1) % run.checkpoint_every == 0:
                    ckpt.save(acc, step.epoch, step.index + 1, step.seen + 1)
    finally:
        bar.close()


def _provenance(models: _Models, sides: _Sides, run: RunOptions, world: int) -> dict:
    """The attrs compare_models adds to the accumulator's result."""
    import repsim

    h = sides.hooks_a
    return {
        "model_a": models.names[0],
        "model_b": models.names[1],
        "within_model": int(models.within),
        "epochs": run.epochs,
        "seed": run.seed,
        "pooling": h.pooling if isinstance(h.pooling, str) else option_identity(
            "pooling", h.pooling, False),
        "repeated": h.repeated,
        "world_size": world,
        "repsim_version": repsim.__version__,
        "torch_version": torch.__version__,
    }


def compare_models(
    model_a: nn.Module,
    model_b: nn.Module | None,
    loader: Iterable[Any],
    layers_a: LayerSpec = None,
    layers_b: LayerSpec = None,
    *,
    estimator: str = "unbiased",
    pooling: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    precision: str = "float32",
    names: tuple[str, str] | None = None,
    capture: CaptureOptions | None = None,
    statistics: StatisticsOptions | None = None,
    run: RunOptions | None = None,
    **deprecated: Any,
) -> Any:
    """Minibatch CKA between every layer of one model and every layer of another.

    Each batch runs through the model(s) once with forward hooks that form every selected
    layer's ``n x n`` gram as soon as it runs; the grams of the batch are centred, stacked
    and paired by one matrix product into float64 running sums
    (:meth:`repsim.MinibatchCKA.update_grams`), and CKA is computed once at the end.
    Activations are never stored, and layer pairs are never looped over.

    Parameters
    ----------
    model_a, model_b : torch.nn.Module
        The models (DataParallel / DDP / ``torch.compile`` wrappers are unwrapped);
        ``model_b`` None or ``model_a`` itself gives the within-model comparison (one
        forward per batch, symmetric result).
    loader : iterable
        Batches of inputs: tensors, ``(input, target, ...)`` sequences (the first element
        is the input) or dicts of keyword arguments for the model, e.g. a
        :class:`torch.utils.data.DataLoader`; ``n >= 4`` examples each (unbiased).
    layers_a, layers_b : None, str, type or list, optional
        Layers by exact name, glob pattern or module type (:func:`select_layers`).
        Default: every leaf module; within one model ``layers_b`` defaults to ``layers_a``.
    estimator : {"unbiased", "biased"}, default "unbiased"
        HSIC estimator per batch.
    pooling : str or callable, optional
        How each layer's output becomes ``(n, features)``, for both models (see
        :class:`GramHooks`); the same as ``CaptureOptions.pooling``. Default "flatten".
    device : str or torch.device, optional
        Where the forward passes and grams run; the models are moved there (``.to`` acts in
        place). Default: the device of ``model_a``'s parameters.
    progress : bool, default True
        A tqdm bar (on rank 0 only under torch.distributed) on a terminal or in Jupyter,
        one line at the end in a non-interactive log; False shows nothing.
    precision : {"float32", "bfloat16", "tf32"}, default "float32"
        How the hooks form each gram's product (as in :func:`repsim.cka`; see
        :func:`repsim.precision_support`); recorded in the result's attrs.
    names : (str, str), optional
        Model names for the result; default: the model classes' names.
    capture : CaptureOptions, optional
        What the hooks capture and how the models run: ``select``, ``pooling``,
        ``repeated``, ``transform``, ``forward``, ``eval_mode``, or prebuilt ``hooks``.
    statistics : StatisticsOptions, optional
        What is estimated: ``kernel``, ``sigma``, ``threshold``, ``weighting``, and
        ``groups`` and ``level`` for jackknife intervals.
    run : RunOptions, optional
        How the loader runs: ``epochs``, ``seed``, ``checkpoint``, ``checkpoint_every``,
        ``engine``, or a ready ``accumulator``.
    **deprecated
        Those groups' fields as flat keywords (``epochs=2``), as in repsim 0.1: accepted
        until repsim 0.3 with a DeprecationWarning naming the group to use.

    Returns
    -------
    xarray.DataArray, shape (L_a, L_b)
        Minibatch CKA with dims ``("layer_a", "layer_b")`` and the module names as
        coordinates (``"name:i"`` for the i-th call under ``repeated="index"``); attrs
        ``model_a``, ``model_b``, ``estimator``, ``kernel``, ``weighting``, ``n_examples``,
        ``n_batches``, ``epochs``, ``seed``, ``pooling``, ``world_size``, ``repsim_version``
        and ``torch_version``. Constant layers give NaN with a warning naming them.
    xarray.Dataset
        With ``StatisticsOptions.groups``: variables ``cka``, ``stderr``, ``ci_low``,
        ``ci_high`` (attrs plus ``method``, ``level``, ``n_groups``) and the leave-one-group-
        out matrices ``jackknife`` (dims ``group, layer_a, layer_b``).

    Raises
    ------
    ValueError
        For unknown layers or options (naming the group and field), batches of fewer than 4
        examples (unbiased), NaN or Inf activations (naming the layer), a module called
        twice with ``repeated="error"``, or a checkpoint of another comparison.

    Notes
    -----
    Forward passes run under ``torch.inference_mode``; similarities are not differentiable.
    **Distributed**: under an initialised process group, process ``r`` of ``w`` runs batches
    ``r, r + w, ...`` (or what its DistributedSampler yields) and the sum states are
    all-reduced, so every process returns the single-process result (to rounding); see
    the user guide's "Distributed comparisons". **Cost** per batch of ``n`` over ``L``
    layers of widths ``p_l``: grams ``sum_l 2 n^2 p_l`` flops in the hooks, centring
    ``O(L n^2)``, one ``(L_a, n^2) x (n^2, L_b)`` float64 product; memory ``L n^2``.

    Examples
    --------
    >>> import torch, repsim
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> data = [torch.randn(32, 8) for _ in range(4)]
    >>> sim = repsim.compare_models(net, None, data, progress=False)
    >>> sim.sizes
    Frozen({'layer_a': 3, 'layer_b': 3})
    >>> round(float(sim.sel(layer_a="0", layer_b="0")), 6)
    1.0
    >>> twice = repsim.compare_models(net, None, data, progress=False,
    ...                               run=repsim.RunOptions(epochs=2, seed=1))
    >>> twice.attrs["epochs"]
    2
    """
    capture, statistics, run = resolve_options(
        dict(capture=capture, statistics=statistics, run=run), deprecated, pooling, _FLAT)
    if run.epochs > 1 and isinstance(loader, collections.abc.Iterator):
        raise ValueError(
            f"RunOptions.epochs={run.epochs} needs a loader that can be iterated again (a "
            f"DataLoader, a list); got a one-shot {type(loader).__name__}"
        )
    rank, world = _dist_context()
    acc = _make_accumulator(estimator, precision, statistics, run, world)
    models = _models(model_a, model_b, device, names)
    sides = _build_sides(models, capture, layers_a, layers_b, acc)
    ckpt = _open_checkpoint(run, models, sides, capture.forward, acc, rank, world)
    _stream(loader, acc, sides, models, capture, run, ckpt, progress, rank, world)
    if world > 1:
        all_reduce_accumulator(acc, models.device)
    elif not acc.n_batches:
        raise ValueError("loader yielded no batches")
    if getattr(acc, "groups", None):
        result = acc.compute(uncertainty=True, level=statistics.level)
    else:
        result = acc.compute()
    result.attrs.update(_provenance(models, sides, run, world))
    return result


# compare_models' own keywords, for the "did you mean" of an unknown one
_FLAT = tuple(inspect.signature(compare_models).parameters)[3:-1]
