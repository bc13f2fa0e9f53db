"""The driver of the PyTorch adapter: :func:`compare_models`.

Running the batches (the forward of one batch, :func:`_run_forward`, and the one
generator of epoch, shard and resume decisions, :func:`_batches`) lives in ``_batches``;
here :func:`compare_models` resolves its arguments and wires hooks, accumulator,
checkpoints, progress and the all-reduce together. The accumulator is used through its base's interface only
(``update_grams``, ``compute``, ``state_dict``/``load_state_dict``, ``sync``).
"""

from __future__ import annotations

import collections.abc
import contextlib
import numbers
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .. import _validation as V
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
from ._selection import LayerSpec, select_layers, unwrap_model


_HOOK_DEFAULTS = dict(layers_a=None, layers_b=None, select=None, pooling="flatten",
                      repeated="error", transform=None)
_ACC_DEFAULTS = dict(estimator="unbiased", kernel="linear", sigma=None, threshold=1.0,
                     engine="auto", groups=None, weighting="pairs", precision="float32")


def _refuse_with(what, given, defaults):
    clash = sorted(k for k, v in given.items() if v is not defaults[k] and v != defaults[k])
    if clash:
        raise ValueError(f"pass either {what} or {clash}, not both (set them on the "
                         f"{what.split('=')[0]} object)")


@dataclass
class _Sides:
    """The hooks of a comparison and which of their layers go to each side."""

    hooks_a: GramHooks
    hooks_b: GramHooks | None
    names_a: list
    names_b: list
    symmetric: bool

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


def _build_sides(inner_a, inner_b, within, hooks, layers_a, layers_b, hook_opts):
    if hooks is not None:
        pair = hooks if isinstance(hooks, tuple) else (hooks,)
        if not all(isinstance(h, GramHooks) for h in pair) or len(pair) != (1 if within else 2):
            raise TypeError("hooks must be a GramHooks (one model) or a pair of GramHooks "
                            f"(model_a's, model_b's); got {hooks!r}")
        if pair[0].model is not inner_a or (not within and pair[1].model is not inner_b):
            raise ValueError("hooks must be built on the models compared (model_a's first)")
        if within:
            return _Sides(pair[0], None, pair[0].names, pair[0].names, True)
        return _Sides(pair[0], pair[1], pair[0].names, pair[1].names, False)
    if within:
        names_a = select_layers(inner_a, layers_a)
        names_b = names_a if layers_b is None else select_layers(inner_a, layers_b)
        union = list(OrderedDict.fromkeys(names_a + names_b))
        return _Sides(GramHooks(inner_a, union, **hook_opts), None, names_a, names_b,
                      names_b == names_a)
    ha, hb = GramHooks(inner_a, layers_a, **hook_opts), GramHooks(inner_b, layers_b, **hook_opts)
    return _Sides(ha, hb, ha.names, hb.names, False)


def compare_models(
    model_a: nn.Module,
    model_b: nn.Module | None,
    loader: Iterable[Any],
    layers_a: LayerSpec = None,
    layers_b: LayerSpec = None,
    *,
    epochs: int = 1,
    estimator: str = "unbiased",
    device: str | torch.device | None = None,
    progress: bool = True,
    seed: int = 0,
    kernel: str = "linear",
    sigma: float | dict[str, float] | None = None,
    select: Callable[[Any], Any] | dict[str, Callable[[Any], Any]] | None = None,
    pooling: str | Callable[[torch.Tensor], torch.Tensor] = "flatten",
    repeated: str = "error",
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    eval_mode: bool = True,
    names: tuple[str, str] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    groups: int | None = None,
    level: float = 0.9,
    threshold: float = 1.0,
    engine: str = "auto",
    weighting: str = "pairs",
    precision: str = "float32",
    hooks: GramHooks | tuple[GramHooks, GramHooks] | None = None,
    accumulator: MinibatchCKA | None = None,
) -> Any:
    """Minibatch CKA between every layer of one model and every layer of another.

    Each batch runs through the model(s) once with forward hooks that form every selected
    layer's ``n x n`` gram as soon as it runs; the grams of the batch are centred, stacked
    and paired by one matrix product into float64 running sums
    (:meth:`repsim.MinibatchCKA.update_grams`), and CKA is computed once at the end.
    Activations are never stored, and layer pairs are never looped over.

    Parameters
    ----------
    model_a : torch.nn.Module
        First model (DataParallel / DDP / ``torch.compile`` wrappers are unwrapped).
    model_b : torch.nn.Module or None
        Second model; None or ``model_a`` itself gives the within-model comparison (one
        forward per batch, symmetric result).
    loader : iterable
        Batches of inputs: tensors, ``(input, target, ...)`` sequences (the first element
        is the input) or dicts of keyword arguments for the model, e.g. a
        :class:`torch.utils.data.DataLoader`. Every batch needs ``n >= 4`` examples for
        the unbiased estimator.
    layers_a, layers_b : None, str, type or list, optional
        Layers to compare, by exact name, glob pattern or module type (see
        :func:`select_layers`). Default: every leaf module. Within one model, ``layers_b``
        defaults to ``layers_a``.
    epochs : int, default 1
        Passes over ``loader`` (Nguyen et al. use 10 with random augmentation).
    estimator : {"unbiased", "biased"}, default "unbiased"
        HSIC estimator per batch.
    device : str or torch.device, optional
        Where the forward passes and grams run; the models are moved there (``.to`` acts in
        place). Default: the device of ``model_a``'s parameters.
    progress : bool, default True
        Show progress (on rank 0 only under torch.distributed): a tqdm bar on a terminal
        or in Jupyter (when tqdm is installed), one line when the run ends in a
        non-interactive log; False shows nothing.
    seed : int, default 0
        torch's global RNG is seeded from ``(seed, epoch)`` at the start of every epoch, so
        a shuffling DataLoader repeats its order (and a resumed run continues exactly);
        the caller's RNG state is restored afterwards.
    kernel : {"linear", "rbf"}, default "linear"
    sigma : float or dict name -> float, optional
        RBF bandwidth; default: median heuristic calibrated on the first batch. Under
        torch.distributed an RBF comparison needs an explicit ``sigma`` (each process would
        calibrate on a different batch).
    threshold, engine, weighting
        Passed to :class:`repsim.MinibatchCKA`: the median-heuristic fraction, the
        centring engine, and how ragged batches are weighted (``"pairs"``, the official
        code's sums, or ``"batches"``, Nguyen et al. eq. 3).
    precision : {"float32", "bfloat16", "tf32"}, default "float32"
        How the hooks form each gram's product (as in :func:`repsim.cka`; the reduced
        modes pay off only on hardware with the units for them,
        :func:`repsim.precision_support`); recorded in the result's attrs.
    select, pooling, repeated, transform
        How a layer's output becomes the ``(n, features)`` matrix of its gram; see
        :class:`GramHooks`. ``select`` and ``pooling`` apply to both models.
    forward : callable, optional
        ``forward(model, batch) -> output`` for batch layouts other than the above, or
        for an entry point other than ``forward`` (``lambda m, b: m.encode(b)``); the
        hooks start a new pass before every batch either way.
    hooks : GramHooks or (GramHooks, GramHooks), optional
        Hooks built beforehand (``GramHooks(model_a, layers, pooling=...)``; a pair for
        two models) instead of ``layers_a``, ``layers_b``, ``select``, ``pooling``,
        ``repeated`` and ``transform``, which must then be left at their defaults. Within
        one model the result is symmetric over the hooks' layers.
    accumulator : repsim.MinibatchCKA or repsim.FeatureMoments, optional
        A fresh accumulator to fill (any accumulator on :mod:`repsim._accumulator`'s base
        with ``update_grams`` and ``compute``) instead of ``estimator``, ``kernel``,
        ``sigma``, ``threshold``, ``engine``, ``groups``, ``weighting`` and ``precision``,
        which must then be left at their defaults. One that declares ``CONSUMES = "features"``
        (:class:`repsim.FeatureMoments`) gets each layer's pooled activations through
        ``update_features`` instead of grams; the result is its ``compute()`` (linear
        CKA) and the filled accumulator gives the other measures.
    eval_mode : bool, default True
        Put the models in eval mode for the comparison (every module's training flag is
        restored afterwards). Forward passes always run under ``torch.inference_mode``.
    names : (str, str), optional
        Model names for the result; default: the model classes' names.
    checkpoint : str or os.PathLike, optional
        File to save the accumulator state in every ``checkpoint_every`` batches (written
        atomically). If it exists when the call starts, the comparison resumes from it;
        a checkpoint from a finished run returns its result at once. The same comparison
        is required -- layers, options, bandwidths, the identity of every callable
        (``select``, ``pooling``, ``transform``, ``forward``: by qualified name and
        ``functools.partial`` contents, so a new process can resume; lambdas and local
        functions are refused up front) and a fingerprint of each model's parameters and
        buffers -- otherwise a ValueError lists what differs. Under torch.distributed
        each process uses ``<stem>.rank<r>of<w><ext>``.
    checkpoint_every : int, default 50
        Batches between checkpoints.
    groups : int, optional
        Also keep the sums of ``groups`` (>= 2) disjoint sets of batches -- batch ``t`` of
        the whole run, counted across epochs (and across processes, as a single process
        would count them), goes to group ``t % groups`` -- and return a standard error
        and a ``level`` interval for every entry (delete-a-group jackknife, see
        :meth:`repsim.MinibatchCKA.compute`).
    level : float, default 0.9
        Confidence level of the intervals when ``groups`` is given.

    Returns
    -------
    xarray.DataArray, shape (L_a, L_b)
        Minibatch CKA with dims ``("layer_a", "layer_b")`` and the module names as
        coordinates (``"name:i"`` for the i-th call under ``repeated="index"``); attrs
        ``model_a``, ``model_b``, ``estimator``, ``kernel``, ``weighting``, ``n_examples``,
        ``n_batches``, ``epochs``, ``seed``, ``pooling``, ``world_size``, ``repsim_version``
        and ``torch_version``. Constant layers give NaN with a warning naming them.
    xarray.Dataset
        With ``groups``: variables ``cka``, ``stderr``, ``ci_low``, ``ci_high`` with those
        dims and attrs (plus ``method``, ``level``, ``n_groups``), and the leave-one-group-out
        matrices ``jackknife`` (dims ``group, layer_a, layer_b``) for
        :func:`repsim.jackknife_interval`.

    Raises
    ------
    ValueError
        For unknown layers or options, batches of fewer than 4 examples (unbiased), NaN or
        Inf activations (naming the layer), a module called twice with
        ``repeated="error"``, a checkpoint from a different comparison or one that cannot
        be read (empty, truncated, another file), or unportable callables with
        ``checkpoint=``.

    Notes
    -----
    Similarities are not differentiable: forward passes run under
    ``torch.inference_mode`` and the grams are formed from detached outputs.

    **Distributed.** Under an initialised :mod:`torch.distributed` process group (gloo on
    CPU, NCCL on GPU), process ``r`` of ``w`` runs the batches ``r, r + w, r + 2w, ...``
    of ``loader`` -- or every batch it yields, when the loader already shards through a
    :class:`~torch.utils.data.distributed.DistributedSampler` -- and the sum states are
    all-reduced before the result is computed, so every process returns the same result,
    equal (to rounding) to the single-process one. Launch with torchrun::

        torchrun --standalone --nproc_per_node=4 compare.py

    where ``compare.py`` calls ``torch.distributed.init_process_group("nccl")`` (or
    ``"gloo"`` on CPU), sets ``torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))`` on
    GPUs, and then ``repsim.compare_models(..., device="cuda")``.

    **Cost.** Per batch of ``n`` over ``L`` layers of widths ``p_l``: the grams,
    ``sum_l 2 n^2 p_l`` flops, formed in the hooks; centring, ``O(L n^2)``; the pairing,
    one ``(L_a, n^2) x (n^2, L_b)`` float64 product. Memory per batch: ``L n^2`` numbers
    instead of ``n sum_l p_l`` activations.

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
    """
    epochs = V.check_int(epochs, "epochs", 1)
    checkpoint_every = V.check_int(checkpoint_every, "checkpoint_every", 1)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
    V.check_params(forward=forward)
    if epochs > 1 and isinstance(loader, collections.abc.Iterator):
        raise ValueError(
            f"epochs={epochs} needs a loader that can be iterated again (a DataLoader, a "
            f"list); got a one-shot {type(loader).__name__}"
        )
    acc_opts = dict(estimator=estimator, kernel=kernel, sigma=sigma, threshold=threshold,
                    engine=engine, groups=groups, weighting=weighting, precision=precision)
    if accumulator is None:
        acc = MinibatchCKA(**acc_opts)  # checks its options against V.PARAMS
    else:
        _refuse_with("accumulator=", acc_opts, _ACC_DEFAULTS)
        feed = "update_features" if getattr(accumulator, "CONSUMES", None) == "features" \
            else "update_grams"
        if not (hasattr(accumulator, feed) and hasattr(accumulator, "sync")
                and hasattr(accumulator, "CONSUMES")):
            raise TypeError("accumulator must be a repsim accumulator with update_grams "
                            "(a MinibatchCKA) or consuming features with update_features (a "
                            f"FeatureMoments); got {type(accumulator).__name__}")
        if accumulator.started:
            raise ValueError("accumulator must be fresh (no batches yet); call reset() first")
        acc = accumulator
    groups = getattr(acc, "groups", None)
    features = acc.CONSUMES == "features"
    hook_opts = dict(select=select, pooling=pooling, repeated=repeated, transform=transform)
    if hooks is not None:
        _refuse_with("hooks=", dict(layers_a=layers_a, layers_b=layers_b, **hook_opts),
                     _HOOK_DEFAULTS)
        if any(h.features != features for h in (hooks if isinstance(hooks, tuple) else (hooks,))
               if isinstance(h, GramHooks)):
            raise ValueError(f"hooks must be built with features={features} for a "
                             f"{type(acc).__name__} accumulator")
    hook_opts["features"] = features
    hook_opts["precision"] = getattr(acc, "precision", "float32")
    if hooks is not None and any(h.precision != hook_opts["precision"] for h in
                                 (hooks if isinstance(hooks, tuple) else (hooks,))
                                 if isinstance(h, GramHooks)):
        raise ValueError(f"hooks must be built with precision={hook_opts['precision']!r}, "
                         "the accumulator's")
    # MinibatchCKA centres every gram it is given in float64: the hooks leave it uncentred
    hook_opts["centred"] = not isinstance(acc, MinibatchCKA)

    inner_a = unwrap_model(model_a)
    within = model_b is None or model_b is model_a or unwrap_model(model_b) is inner_a
    inner_b = inner_a if within else unwrap_model(model_b)
    dev = _model_device(inner_a, device)
    if device is not None:
        inner_a.to(dev)
        inner_b.to(dev)
    rank, world = _dist_context()
    if world > 1 and getattr(acc, "kernel", None) == "rbf" and getattr(acc, "sigma", 1) is None:
        raise ValueError(
            "kernel='rbf' under torch.distributed needs an explicit sigma (each process "
            "would calibrate the bandwidth on a different batch)"
        )
    sides = _build_sides(inner_a, inner_b, within, hooks, layers_a, layers_b, hook_opts)
    model_names = tuple(names) if names is not None else (
        type(inner_a).__name__, type(inner_b).__name__)
    if len(model_names) != 2:
        raise ValueError(f"names must be two strings (model_a, model_b); got {names!r}")
    h = sides.hooks_a
    pooling_text = h.pooling if isinstance(h.pooling, str) else option_identity(
        "pooling", h.pooling, False)

    ckpt = None if checkpoint is None else rank_path(checkpoint, rank, world)
    start = (0, 0, 0)
    if ckpt is not None:
        config = checkpoint_config(
            dict(model_a=model_names[0], model_b=model_names[1], layers_a=list(sides.names_a),
                 layers_b=list(sides.names_b), symmetric=sides.symmetric, epochs=epochs,
                 seed=int(seed), rank=rank, world_size=world),
            [sides.hooks_a] if sides.hooks_b is None else [sides.hooks_a, sides.hooks_b],
            [inner_a] if within else [inner_a, inner_b], forward)
        if os.path.exists(ckpt):
            start = load_checkpoint(ckpt, acc, config, dev)

    try:
        total = epochs * len(loader)
    except TypeError:
        total = None
    initial = 0 if total is None else min(total, start[0] * (total // epochs) + start[1])
    bar = _progress_display(total=total, initial=initial, desc="compare_models", unit="batch",
                            enabled=bool(progress) and rank == 0)
    sharded = world > 1 and not _presharded(loader)
    managers = [sides.hooks_a] + ([sides.hooks_b] if sides.hooks_b is not None else [])
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), contextlib.ExitStack() as stack:
            stack.enter_context(_inference([inner_a] if within else [inner_a, inner_b],
                                           eval_mode))
            for hk in managers:
                stack.enter_context(hk)
            for step in _batches(loader, epochs=epochs, seed=seed, start=start,
                                 sharded=sharded, rank=rank, world=world):
                if step.index is None:  # end of an epoch
                    if ckpt is not None:
                        save_checkpoint(ckpt, acc, config, step.epoch + 1, 0, step.seen)
                    continue
                if step.mine:
                    if groups:  # same group as in a single process
                        acc.set_group((step.seen * world + rank if not sharded and world > 1
                                       else step.seen) % groups)
                    for hk, model in zip(managers, (inner_a, inner_b)):
                        hk.start_pass()
                        _run_forward(model, step.batch, dev, forward)
                    (acc.update_features if features else acc.update_grams)(*sides.grams())
                bar.update(1)
                if ckpt is not None and (step.index + 1) % checkpoint_every == 0:
                    save_checkpoint(ckpt, acc, config, step.epoch, step.index + 1, step.seen + 1)
    finally:
        bar.close()

    if world > 1:
        all_reduce_accumulator(acc, dev)
    elif not acc.n_batches:
        raise ValueError("loader yielded no batches")

    result = acc.compute(uncertainty=True, level=level) if groups else acc.compute()
    import repsim

    result.attrs.update({
        "model_a": model_names[0],
        "model_b": model_names[1],
        "within_model": int(within),
        "epochs": epochs,
        "seed": int(seed),
        "pooling": pooling_text,
        "repeated": h.repeated,
        "world_size": world,
        "repsim_version": repsim.__version__,
        "torch_version": torch.__version__,
    })
    return result

