"""PyTorch adapter: hook any model, stream every layer into minibatch CKA.

Forward hooks on the selected modules turn each layer's output into its ``n x n`` gram the
moment the layer runs (so in-place operations later in the forward cannot corrupt it, and
no activation outlives its layer); at the end of each batch the grams go to
:meth:`repsim.MinibatchCKA.update_grams`, which centres them and pairs all layers with one
matrix product. Under :mod:`torch.distributed` every process runs its shard of the data
and the accumulator's sum states are all-reduced before the result is computed.

This module imports torch; ``import repsim`` loads it only when one of its names is used.

References
----------
Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?
Uncovering how neural network representations vary with width and depth", ICLR
(minibatch CKA over every pair of layers, section 3.1).
"""

from __future__ import annotations

import collections.abc
import contextlib
import difflib
import numbers
import warnings
import os
import re
import tempfile
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from .. import _validation as V
from ..kernels import ESTIMATORS, KERNELS
from ..streaming import MinibatchCKA

__all__ = ["GramHooks", "compare_models", "select_layers"]

POOLINGS = ("flatten", "spatial_mean", "token_mean", "first_token")
REPEATS = ("error", "index")
_GLOB_CHARS = re.compile(r"[*?\[]")
FORMAT = 2  # checkpoint layout: the accumulator's declared state_dict


# --------------------------------------------------------------------------- selection
def unwrap_model(model):
    """The module inside DataParallel / DistributedDataParallel / ``torch.compile`` wrappers.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    torch.nn.Module
        ``model.module`` (repeatedly) for data-parallel wrappers and ``model._orig_mod``
        for compiled models; ``model`` itself otherwise.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _glob_regex(pattern):
    """``*`` and ``?`` stay within one dotted name component; ``**`` crosses dots."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _strip_prefix(name, names):
    """Drop DataParallel/DDP (``module.``) and compile (``_orig_mod.``) prefixes."""
    while name not in names:
        for prefix in ("module.", "_orig_mod."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        else:
            return name
    return name


def select_layers(model, layers=None):
    """Resolve a layer specification to module names of ``model``, in order.

    Parameters
    ----------
    model : torch.nn.Module
        Wrappers (DataParallel, DistributedDataParallel, ``torch.compile``) are unwrapped;
        names are those of the inner model, without ``module.`` prefixes.
    layers : None, str, type, or a list (or tuple) of them
        - None: every leaf module (one without children).
        - an exact dotted module name, e.g. ``"stage2.block0"`` (a ``module.`` prefix
          copied from a DataParallel model is accepted and dropped);
        - a glob pattern: ``*`` and ``?`` match within one dotted component, ``**`` across
          components, ``[...]`` a character class; ``"stage*.block*"`` selects the residual
          blocks and ``"**"`` every module;
        - an ``nn.Module`` subclass (or a tuple of them): every module of that type.

        A list is resolved item by item; the result keeps the list's order (each pattern
        or type contributes its matches in module order) and drops repeats.

    Returns
    -------
    list of str
        Dotted module names (the root module itself is never selected).

    Raises
    ------
    ValueError
        If an exact name does not exist (close matches are suggested) or a pattern or
        type matches nothing.
    TypeError
        If an item is neither a string nor a module type.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> select_layers(net, [nn.Linear])
    ['0', '2']
    >>> select_layers(net, "*")
    ['0', '1', '2']
    """
    model = unwrap_model(model)
    modules = OrderedDict((n, m) for n, m in model.named_modules() if n)
    if layers is None:
        found = [n for n, m in modules.items() if not any(True for _ in m.children())]
        if not found:
            raise ValueError(f"{type(model).__name__} has no submodules to hook; pass layers=")
        return found
    if isinstance(layers, list) or (isinstance(layers, tuple) and not _is_module_type(layers)):
        specs = list(layers)
    else:
        specs = [layers]
    out = OrderedDict()
    for spec in specs:
        if isinstance(spec, str):
            if _GLOB_CHARS.search(spec):
                pattern = _glob_regex(spec)
                hits = [n for n in modules if pattern.match(n)]
                if not hits:
                    stripped = _strip_prefix(spec, ())
                    if stripped != spec:
                        pattern = _glob_regex(stripped)
                        hits = [n for n in modules if pattern.match(n)]
                if not hits:
                    raise ValueError(
                        f"layer pattern {spec!r} matches no module of {type(model).__name__} "
                        "(* and ? stay within one dotted component; use ** to cross dots)"
                    )
            else:
                name = _strip_prefix(spec, modules)
                if name not in modules:
                    close = difflib.get_close_matches(name, list(modules), n=5)
                    hint = f"; did you mean {close}?" if close else ""
                    raise ValueError(
                        f"layer {spec!r} is not a module of {type(model).__name__}{hint}"
                    )
                hits = [name]
        elif _is_module_type(spec):
            hits = [n for n, m in modules.items() if isinstance(m, spec)]
            if not hits:
                raise ValueError(
                    f"layer type {_type_name(spec)} matches no module of {type(model).__name__}"
                )
        else:
            raise TypeError(
                "layers must be None, a module name, a glob pattern, an nn.Module subclass, "
                f"or a list of them; got {spec!r}"
            )
        for n in hits:
            out[n] = None
    return list(out)


def _is_module_type(spec):
    if isinstance(spec, tuple):
        return bool(spec) and all(_is_module_type(s) for s in spec)
    return isinstance(spec, type) and issubclass(spec, nn.Module)


def _type_name(spec):
    if isinstance(spec, tuple):
        return "(" + ", ".join(s.__name__ for s in spec) + ")"
    return spec.__name__


# --------------------------------------------------------------------------- hooks
def _default_select(output, name):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"layer {name!r} returned {type(output).__name__}, not a tensor (or a tuple/list "
        "starting with one); pass select= a function that picks the tensor to compare, "
        "e.g. select=lambda out: out.last_hidden_state"
    )


def _pool(x, pooling, name):
    """``(n, ...)`` layer output -> ``(n, features)`` under the pooling policy."""
    if callable(pooling):
        x = pooling(x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"pooling returned {type(x).__name__} for layer {name!r}; expected a tensor"
            )
    elif pooling == "spatial_mean":
        if x.ndim < 3:
            raise ValueError(
                f"pooling='spatial_mean' needs an output of shape (n, channels, *spatial); "
                f"layer {name!r} gave shape {tuple(x.shape)}"
            )
        x = x.mean(dim=tuple(range(2, x.ndim)))
    elif pooling in ("token_mean", "first_token"):
        if x.ndim != 3:
            raise ValueError(
                f"pooling={pooling!r} needs an output of shape (n, tokens, features); "
                f"layer {name!r} gave shape {tuple(x.shape)}"
            )
        x = x.mean(dim=1) if pooling == "token_mean" else x[:, 0]
    if x.ndim < 2:
        raise ValueError(
            f"layer {name!r} gave shape {tuple(x.shape)}; expected (n, ...) with at least 2 "
            "dimensions (a per-example output)"
        )
    return x.reshape(x.shape[0], -1)


class GramHooks:
    """Forward hooks that turn each selected layer's output into its ``n x n`` gram.

    Use it as a context manager: the hooks are registered on entry and always removed on
    exit, also when the forward raises. A forward pre-hook on the model starts a new pass,
    so :attr:`grams` always holds the grams of the most recent forward.

    Parameters
    ----------
    model : torch.nn.Module
        Any model; DataParallel / DistributedDataParallel / ``torch.compile`` wrappers are
        unwrapped (hooks go on the inner modules, names carry no ``module.`` prefix).
    layers : None, str, type or list
        Which modules to hook; see :func:`select_layers`. Default: every leaf module.
    select : callable or dict name -> callable, optional
        Picks the tensor to compare from a module's output (for tuple, dict or dataclass
        outputs), e.g. ``lambda out: out.last_hidden_state``. Default: a tensor is used as
        is, a tuple or list contributes its first element; anything else raises TypeError.
    pooling : {"flatten", "spatial_mean", "token_mean", "first_token"} or callable
        How a ``(n, ...)`` output becomes ``(n, features)``. ``"flatten"`` (default, the
        paper's protocol) keeps every unit; ``"spatial_mean"`` averages ``(n, c, h, w)``
        maps over space to ``(n, c)``; ``"token_mean"`` and ``"first_token"`` reduce
        ``(n, tokens, d)`` sequences to ``(n, d)``. A callable gets the tensor and returns
        ``(n, ...)``.
    repeated : {"error", "index"}, default "error"
        A module that runs several times in one forward (weight sharing, recurrence):
        ``"error"`` raises ValueError naming it; ``"index"`` compares each call separately
        as layers ``"name:0"``, ``"name:1"``, ...
    transform : callable, optional
        Applied to each ``(n, features)`` tensor before its gram (e.g. removing top PCs).

    Attributes
    ----------
    names : list of str
        The hooked module names.
    grams : dict name -> tensor, shape (n, n)
        Grams of the latest forward pass, in module-selection order (float32 for float32
        and half-precision outputs, float64 for float64 outputs).

    Notes
    -----
    The gram is formed inside the hook from the detached output, upcast from
    float16/bfloat16 to float32 first, so later in-place operations (``ReLU(inplace=True)``)
    cannot change what was captured, and only ``n x n`` numbers per layer are kept.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    >>> with GramHooks(net, [nn.Linear]) as hooks:
    ...     _ = net(torch.randn(16, 4))
    >>> {name: tuple(g.shape) for name, g in hooks.grams.items()}
    {'0': (16, 16), '2': (16, 16)}
    """

    def __init__(self, model, layers=None, *, select=None, pooling="flatten",
                 repeated="error", transform=None):
        self.model = unwrap_model(model)
        self.names = select_layers(self.model, layers)
        if not (callable(pooling) or pooling in POOLINGS):
            V.check_option(pooling, "pooling", POOLINGS)
        self.pooling = pooling
        self.repeated = V.check_option(repeated, "repeated", REPEATS)
        if isinstance(select, dict):
            unknown = sorted(set(select) - set(self.names))
            if unknown:
                raise ValueError(f"select has functions for layers that are not hooked: {unknown}")
        elif select is not None and not callable(select):
            raise TypeError(f"select must be a callable or a dict name -> callable; got {select!r}")
        self.select = select
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable; got {transform!r}")
        self.transform = transform
        self._handles = []
        self._grams = {}
        self._calls = {}

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self):
        if self._handles:
            raise RuntimeError("these hooks are already registered")
        modules = dict(self.model.named_modules())
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._new_pass))
            for name in self.names:
                self._handles.append(modules[name].register_forward_hook(self._hook_for(name)))
        except BaseException:
            self.remove()
            raise
        self._new_pass()
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def remove(self):
        """Remove every hook (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    @property
    def active(self):
        """Whether the hooks are registered."""
        return bool(self._handles)

    def _new_pass(self, *args):
        self._grams = {}
        self._calls = {name: 0 for name in self.names}

    # ---------------------------------------------------------------- capture
    def _select_for(self, name):
        if isinstance(self.select, dict):
            return self.select.get(name)
        return self.select

    def _hook_for(self, name):
        def hook(module, inputs, output):
            count = self._calls[name]
            self._calls[name] = count + 1
            if self.repeated == "error" and count:
                raise ValueError(
                    f"module {name!r} ran more than once in one forward pass (shared or "
                    "recurrent module); pass repeated='index' to compare each call as "
                    f"'{name}:0', '{name}:1', ..., or hook a module that runs once"
                )
            key = f"{name}:{count}" if self.repeated == "index" else name
            fn = self._select_for(name)
            x = _default_select(output, name) if fn is None else fn(output)
            if not isinstance(x, torch.Tensor):
                raise TypeError(
                    f"select returned {type(x).__name__} for layer {name!r}; expected a tensor"
                )
            self._grams[key] = self._gram(x, name)

        return hook

    def _gram(self, x, name):
        x = _pool(x.detach(), self.pooling, name)
        if not x.dtype.is_floating_point:
            x = x.to(torch.float64)
        elif x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)
        if self.transform is not None:
            x = self.transform(x)
        return x @ x.T

    @property
    def grams(self):
        """Grams of the latest forward pass, ordered as :attr:`names` (calls in order)."""
        if self.repeated == "error":
            missing = [n for n in self.names if n not in self._grams]
            if missing:
                raise ValueError(
                    f"layer(s) {missing} did not run in the last forward pass; hook modules "
                    "that the forward uses"
                )
            return {n: self._grams[n] for n in self.names}
        missing = [n for n in self.names if not self._calls.get(n)]
        if missing:
            raise ValueError(
                f"layer(s) {missing} did not run in the last forward pass; hook modules "
                "that the forward uses"
            )
        return {f"{n}:{i}": self._grams[f"{n}:{i}"] for n in self.names
                for i in range(self._calls[n])}


# --------------------------------------------------------------------------- helpers
def _model_device(model, device):
    if device is not None:
        return torch.device(device)
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _run_forward(model, batch, device, forward):
    """Forward one loader batch: tensor, (input, target, ...) sequence, or dict of kwargs."""
    batch = _to_device(batch, device)
    if forward is not None:
        return forward(model, batch)
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)) and batch:
        return model(batch[0])
    raise TypeError(
        "loader batches must be tensors, (input, target) sequences or dicts of model "
        f"keyword arguments; got {type(batch).__name__} (pass forward=(model, batch) -> "
        "output for other layouts)"
    )


def _dist_context():
    """(rank, world_size) of the default process group, or (0, 1) outside one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _presharded(loader):
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    ds = torch.utils.data.distributed.DistributedSampler
    return isinstance(sampler, ds) or isinstance(inner, ds)


def _comm_device(device):
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_accumulator(acc, device=None):
    """Sum an accumulator's declared states over all processes of the default group.

    ``acc.sync(torch.distributed.all_reduce)`` on the right device: every process must
    call it with an accumulator over the same layers and options (checked first, so a
    mismatch raises the same error everywhere instead of hanging); afterwards each holds
    the sums of all processes, so ``acc.compute()`` gives the same result everywhere.

    Parameters
    ----------
    acc : repsim.MinibatchCKA (or any accumulator built on repsim._accumulator.Accumulator)
    device : torch.device, optional
        The device of the accumulator's tensors (where NCCL's check vector goes when this
        process has no batch).

    Returns
    -------
    Accumulator
        ``acc``, updated in place.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    return acc.sync(torch.distributed.all_reduce, device=_comm_device(device))


# --------------------------------------------------------------------------- checkpoints
def _portable(value):
    """numpy arrays -> CPU tensors (``torch.load(weights_only=True)`` reads them back)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return value


def _save_checkpoint(path, acc, config, epoch, batch, seen):
    state = {k: _portable(v) for k, v in acc.state_dict().items()}
    payload = {"format": FORMAT, "config": config, "epoch": epoch, "batch": batch,
               "seen": seen, "state": state}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_checkpoint(path, acc, config, device):
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT or payload.get("config") != config:
        saved = payload.get("config", {})
        diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} was written by a different comparison "
            f"(differs in {diff}); delete it or pass another checkpoint path"
        )
    state = {k: v.to(device) if isinstance(v, torch.Tensor) else v
             for k, v in payload["state"].items()}
    acc.load_state_dict(state)
    return payload["epoch"], payload["batch"], payload["seen"]


def _rank_path(path, rank, world):
    path = os.fspath(path)
    if world == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.rank{rank}of{world}{ext}"


# --------------------------------------------------------------------------- driver
@contextlib.contextmanager
def _inference(models, eval_mode):
    """eval() + inference_mode for the comparison; every module's training flag restored."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        if eval_mode:
            for model in models:
                model.eval()
        with torch.inference_mode():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def _epoch_seed(seed, epoch):
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def compare_models(
    model_a,
    model_b,
    loader,
    layers_a=None,
    layers_b=None,
    *,
    epochs=1,
    estimator="unbiased",
    device=None,
    progress=True,
    seed=0,
    kernel="linear",
    sigma=None,
    select=None,
    pooling="flatten",
    repeated="error",
    transform=None,
    forward=None,
    eval_mode=True,
    names=None,
    checkpoint=None,
    checkpoint_every=50,
    groups=None,
    level=0.9,
):
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
        Show a tqdm progress bar (on rank 0 only under torch.distributed).
    seed : int, default 0
        torch's global RNG is seeded from ``(seed, epoch)`` at the start of every epoch, so
        a shuffling DataLoader repeats its order (and a resumed run continues exactly);
        the caller's RNG state is restored afterwards.
    kernel : {"linear", "rbf"}, default "linear"
    sigma : float or dict name -> float, optional
        RBF bandwidth; default: median heuristic calibrated on the first batch. Under
        torch.distributed an RBF comparison needs an explicit ``sigma`` (each process would
        calibrate on a different batch).
    select, pooling, repeated, transform
        How a layer's output becomes the ``(n, features)`` matrix of its gram; see
        :class:`GramHooks`. ``select`` and ``pooling`` apply to both models.
    forward : callable, optional
        ``forward(model, batch) -> output`` for batch layouts other than the above.
    eval_mode : bool, default True
        Put the models in eval mode for the comparison (every module's training flag is
        restored afterwards). Forward passes always run under ``torch.inference_mode``.
    names : (str, str), optional
        Model names for the result; default: the model classes' names.
    checkpoint : str or os.PathLike, optional
        File to save the accumulator state in every ``checkpoint_every`` batches (written
        atomically). If it exists when the call starts, the comparison resumes from it
        (same models, layers, loader order and options required; a checkpoint from a
        finished run returns its result at once). Under torch.distributed each process
        uses ``<stem>.rank<r>of<w><ext>``.
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
        ``model_a``, ``model_b``, ``estimator``, ``kernel``, ``n_examples``,
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
        ``repeated="error"``, or a checkpoint from a different comparison.

    Notes
    -----
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
    V.check_option(estimator, "estimator", ESTIMATORS)
    V.check_option(kernel, "kernel", KERNELS)
    epochs = V.check_int(epochs, "epochs", 1)
    checkpoint_every = V.check_int(checkpoint_every, "checkpoint_every", 1)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
    if forward is not None and not callable(forward):
        raise TypeError(f"forward must be callable; got {forward!r}")
    if epochs > 1 and isinstance(loader, collections.abc.Iterator):
        raise ValueError(
            f"epochs={epochs} needs a loader that can be iterated again (a DataLoader, a "
            f"list); got a one-shot {type(loader).__name__}"
        )
    inner_a = unwrap_model(model_a)
    within = model_b is None or model_b is model_a or unwrap_model(model_b) is inner_a
    inner_b = inner_a if within else unwrap_model(model_b)
    dev = _model_device(inner_a, device)
    if device is not None:
        inner_a.to(dev)
        inner_b.to(dev)
    rank, world = _dist_context()
    if world > 1 and kernel == "rbf" and sigma is None:
        raise ValueError(
            "kernel='rbf' under torch.distributed needs an explicit sigma (each process "
            "would calibrate the bandwidth on a different batch)"
        )
    hook_opts = dict(select=select, pooling=pooling, repeated=repeated, transform=transform)
    if within:
        names_a = select_layers(inner_a, layers_a)
        names_b = names_a if layers_b is None else select_layers(inner_a, layers_b)
        symmetric = names_b == names_a
        union = list(OrderedDict.fromkeys(names_a + names_b))
        hooks_a = GramHooks(inner_a, union, **hook_opts)
        hooks_b = None
    else:
        hooks_a = GramHooks(inner_a, layers_a, **hook_opts)
        hooks_b = GramHooks(inner_b, layers_b, **hook_opts)
        names_a, names_b, symmetric = hooks_a.names, hooks_b.names, False
    model_names = tuple(names) if names is not None else (
        type(inner_a).__name__, type(inner_b).__name__)
    if len(model_names) != 2:
        raise ValueError(f"names must be two strings (model_a, model_b); got {names!r}")

    acc = MinibatchCKA(kernel=kernel, estimator=estimator, sigma=sigma, groups=groups)
    sharded = world > 1 and not _presharded(loader)
    config = {
        "model_a": model_names[0], "model_b": model_names[1],
        "layers_a": list(names_a), "layers_b": list(names_b), "symmetric": symmetric,
        "estimator": estimator, "kernel": kernel, "epochs": epochs, "seed": int(seed),
        "pooling": pooling if isinstance(pooling, str) else repr(pooling),
        "repeated": repeated, "rank": rank, "world_size": world, "groups": groups,
    }
    ckpt = None if checkpoint is None else _rank_path(checkpoint, rank, world)
    start_epoch, start_batch, seen = 0, 0, 0
    if ckpt is not None and os.path.exists(ckpt):
        start_epoch, start_batch, seen = _load_checkpoint(ckpt, acc, config, dev)

    try:
        total = epochs * len(loader)
    except TypeError:
        total = None
    bar = None
    if progress and rank == 0:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            warnings.warn("progress=True needs tqdm (pip install tqdm); running without a "
                          "progress bar", stacklevel=2)
            tqdm = None
    if progress and rank == 0 and tqdm is not None:
        bar = tqdm(total=total, desc="compare_models", unit="batch",
                   initial=0 if total is None else min(total, start_epoch * (total // epochs) + start_batch))

    def _batch(batch):
        if within:
            _run_forward(inner_a, batch, dev, forward)
            grams = hooks_a.grams
            ga = {n: grams[n] for n in names_a} if repeated == "error" else grams
            gb = None if symmetric else {n: grams[n] for n in names_b}
        else:
            _run_forward(inner_a, batch, dev, forward)
            ga = hooks_a.grams
            _run_forward(inner_b, batch, dev, forward)
            gb = hooks_b.grams
        if repeated == "index" and within and not symmetric:
            gb = {k: v for k, v in ga.items() if k.rsplit(":", 1)[0] in names_b}
            ga = {k: v for k, v in ga.items() if k.rsplit(":", 1)[0] in names_a}
        acc.update_grams(ga, gb)

    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    managers = [hooks_a] + ([hooks_b] if hooks_b is not None else [])
    try:
        with torch.random.fork_rng(devices=cuda), contextlib.ExitStack() as stack:
            stack.enter_context(_inference([inner_a] if within else [inner_a, inner_b],
                                           eval_mode))
            for h in managers:
                stack.enter_context(h)
            for epoch in range(start_epoch, epochs):
                torch.manual_seed(_epoch_seed(seed, epoch))
                for obj in (getattr(loader, "sampler", None),
                            getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
                    if hasattr(obj, "set_epoch"):
                        obj.set_epoch(epoch)
                first = start_batch if epoch == start_epoch else 0
                index = -1
                for index, batch in enumerate(loader):
                    if index < first:
                        continue
                    if not sharded or index % world == rank:
                        if groups:  # same group as in a single process
                            acc.set_group((seen * world + rank if not sharded and world > 1
                                           else seen) % groups)
                        _batch(batch)
                    seen += 1
                    if bar is not None:
                        bar.update(1)
                    if ckpt is not None and (index + 1) % checkpoint_every == 0:
                        _save_checkpoint(ckpt, acc, config, epoch, index + 1, seen)
                if index < 0 and epoch > 0:
                    raise ValueError(
                        f"loader yielded no batches in epoch {epoch} (a one-shot iterator?); "
                        "pass a loader that can be iterated once per epoch"
                    )
                if ckpt is not None:
                    _save_checkpoint(ckpt, acc, config, epoch + 1, 0, seen)
    finally:
        if bar is not None:
            bar.close()

    if world > 1:
        have = torch.tensor([acc.n_batches], dtype=torch.float64, device=_comm_device(dev))
        torch.distributed.all_reduce(have, op=torch.distributed.ReduceOp.MIN)
        if have.item() < 1:
            raise ValueError(
                f"some of the {world} processes got no batches from the loader; use fewer "
                "processes or more batches"
            )
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
        "pooling": config["pooling"],
        "repeated": repeated,
        "world_size": world,
        "repsim_version": repsim.__version__,
        "torch_version": torch.__version__,
    })
    return result
