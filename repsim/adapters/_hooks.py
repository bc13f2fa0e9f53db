"""Forward hooks that turn each selected layer's output into its ``n x n`` gram.

The two steps another adapter extends live in one place each: the pooling policy,
``(n, ...) -> (rows, features)``, is :func:`repsim.adapters.pooling.pool` (mask-aware for
token sequences), called from :meth:`GramHooks._gram` only.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from .. import _backend as B
from .. import _validation as V
from ..kernels import linear_gram
from ..streaming import apply_transform
from ._selection import LayerSpec, select_layers, unwrap_model
from .pooling import POOLINGS, batch_context, pool

REPEATS = ("error", "index")
V.register_params("GramHooks", pooling=V.Options(*POOLINGS), repeated=V.Options(*REPEATS))


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
    pooling : str or callable, default "flatten"
        How a ``(n, ...)`` output becomes ``(rows, features)``; see
        :mod:`repsim.adapters.pooling`. ``"flatten"`` (default, the paper's protocol)
        keeps every unit; ``"spatial_mean"`` averages ``(n, c, h, w)`` maps over space to
        ``(n, c)``. For sequences ``(n, tokens, d)``: ``"masked_mean"``, ``"last_token"``,
        ``"first_token"``/``"cls"`` give ``(n, d)`` from the real tokens only;
        ``"tokens"`` makes every real token an example; ``"none"`` flattens the real
        tokens of equal-length examples; ``"word_mean"``, ``"word_first"``,
        ``"word_last"`` make every word an example (see
        :func:`repsim.word_aligned_batches`); ``"token_mean"`` averages every position,
        padding included (kept for compatibility; it warns when the mask shows padding).
        A callable gets the tensor and returns ``(n, ...)``.
    repeated : {"error", "index"}, default "error"
        A module that runs several times in one forward (weight sharing, recurrence):
        ``"error"`` raises ValueError naming it; ``"index"`` compares each call separately
        as layers ``"name:0"``, ``"name:1"``, ...
    transform : callable, optional
        Applied to each ``(n, features)`` tensor before its gram (e.g. removing top PCs,
        or :func:`repsim.standardize_features` against rogue dimensions).
    mask : str, callable or None, default "attention_mask"
        Where the padding mask of each forward comes from. A root forward pre-hook sees
        the model's keyword arguments: a string names the argument holding the mask (1 for
        real tokens, 0 for padding); a callable ``(args, kwargs) -> tensor or None`` gives
        it explicitly; None never captures one. A ``repsim_mask`` keyword argument (for
        example an entry of a dict batch) wins over both and is removed before the model
        sees it. Poolings that need a mask refuse to run without one.
    features : bool, default False
        Keep each layer's pooled ``(n, features)`` activations (a copy, so later in-place
        operations cannot change it) instead of its gram, for accumulators that consume
        features (:class:`repsim.FeatureMoments`); :attr:`activations` then holds those
        (and :attr:`grams` refuses).
    centred : bool, default True
        False leaves each gram uncentred for a consumer that centres every gram itself in
        float64 (:class:`repsim.MinibatchCKA`; :func:`repsim.compare_models` builds its
        hooks so): the product is then formed of the features, or of the features less a
        shift where their column means are large (see :func:`repsim.kernels.linear_gram`),
        which centres to the same gram within its error bound, without the ``n x n``
        centring in the hook.
    precision : {"float32", "bfloat16", "tf32"}, default "float32"
        How each gram's product is formed (as in :func:`repsim.cka`).

    Attributes
    ----------
    names : list of str
        The hooked module names.
    grams : dict name -> tensor, shape (n, n)
        Grams of the latest forward pass, in module-selection order (float32 for float32
        and half-precision outputs, float64 for float64 outputs).
    activations : dict name -> tensor, shape (n, features)
        With ``features=True`` (instead of grams): the pooled activations.

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

    def __init__(self, model: nn.Module, layers: LayerSpec = None, *,
                 select: Callable[[Any], Any] | Mapping[str, Callable[[Any], Any]] | None = None,
                 pooling: str | Callable[[torch.Tensor], torch.Tensor] = "flatten",
                 repeated: str = "error",
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 mask: str | Callable[[tuple, dict], torch.Tensor | None] | None
                 = "attention_mask",
                 features: bool = False, centred: bool = True,
                 precision: str = "float32") -> None:
        self.model = unwrap_model(model)
        self.names = select_layers(self.model, layers)
        if not (callable(pooling) or pooling in POOLINGS):
            V.check_params("GramHooks", pooling=pooling)
        self.pooling = pooling
        V.check_params("GramHooks", repeated=repeated)
        self.repeated = repeated
        if isinstance(select, dict):
            unknown = sorted(set(select) - set(self.names))
            if unknown:
                raise ValueError(f"select has functions for layers that are not hooked: {unknown}")
        elif select is not None and not callable(select):
            raise TypeError(f"select must be a callable or a dict name -> callable; got {select!r}")
        self.select = select
        V.check_params(transform=transform)
        self.transform = transform
        if not (mask is None or isinstance(mask, str) or callable(mask)):
            raise TypeError("mask must be None, the name of the model's keyword argument that "
                            f"holds it, or a callable (args, kwargs) -> tensor; got {mask!r}")
        self.mask = mask
        self._context: dict[str, Any] = {}
        if not isinstance(features, bool):
            raise TypeError(f"features must be True or False; got {features!r}")
        self.features = features
        if not isinstance(centred, bool):
            raise TypeError(f"centred must be True or False; got {centred!r}")
        self.centred = centred
        V.check_params(precision=precision)
        self.precision = precision
        self._handles: list[Any] = []
        self._grams: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self):
        if self._handles:
            raise RuntimeError("these hooks are already registered")
        modules = dict(self.model.named_modules())
        try:
            self._handles.append(self.model.register_forward_pre_hook(self.start_pass,
                                                                      with_kwargs=True))
            for name in self.names:
                self._handles.append(modules[name].register_forward_hook(self._hook_for(name)))
        except BaseException:
            self.remove()
            raise
        self.start_pass()
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    @property
    def active(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def start_pass(self, module: nn.Module | None = None, args: tuple = (),
                   kwargs: dict | None = None) -> tuple[tuple, dict] | None:
        """Forget the previous forward's grams and call counts.

        A forward pre-hook on the model calls it before every ``model(...)``;
        :func:`repsim.compare_models` also calls it before each batch, so an entry point
        other than ``forward`` (``forward=lambda m, b: m.encode(b)``) starts a new pass too.
        As the pre-hook it also keeps the attention mask (and word ids) of the call's
        keyword arguments for the pooling, and removes repsim's own entries
        (``repsim_mask``, ``repsim_word_ids``, ...) before the model sees them.
        """
        self._grams = {}
        self._calls = {name: 0 for name in self.names}
        self._context, stripped = batch_context(args, kwargs, self.mask)
        return None if stripped is None else (args, stripped)

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
        """Pool, upcast (the dtype policy of :func:`repsim._backend.float_dtype`),
        transform, then the linear gram of :func:`repsim.kernels.linear_gram`."""
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.to(torch.float32)  # pool at float32 or better, as the gram is formed
        x = pool(x, self.pooling, name, **self._context)
        xp = B.namespace(x)
        x = B.as_float(x, xp)
        if self.transform is not None:
            x = apply_transform(self.transform, x, f"layer {name!r}")
        if self.features:
            return x.clone()
        return linear_gram(x, xp, name=f"layer {name!r}", centred=self.centred,
                           precision=self.precision)

    @property
    def grams(self) -> dict[str, torch.Tensor]:
        """Grams of the latest forward pass, ordered as :attr:`names` (calls in order)."""
        if self.features:
            raise ValueError("these hooks were built with features=True: they keep each "
                             "layer's pooled activations (.activations), not grams")
        return self._latest()

    @property
    def activations(self) -> dict[str, torch.Tensor]:
        """With ``features=True``: each layer's pooled ``(n, features)`` activations of the
        latest forward pass, ordered as :attr:`names`."""
        if not self.features:
            raise ValueError("these hooks form grams (features=False): read .grams, or build "
                             "them with features=True to keep the activations")
        return self._latest()

    def _latest(self) -> dict[str, torch.Tensor]:
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


