"""The grouped options of :func:`repsim.compare_models`, validated in one place.

The everyday call keeps its flat keywords (``estimator``, ``pooling``, ``device``,
``progress``, ``precision``, ``names``); everything else travels in three small frozen
groups, in the manner of ``pyarrow.csv``'s ``ReadOptions``/``ParseOptions``:
:class:`CaptureOptions` (what the hooks capture and how the models run),
:class:`StatisticsOptions` (what is estimated) and :class:`RunOptions` (how the loader is
run, resumed and accumulated). A group is checked once, when it is built: each field
against its constraint in :mod:`repsim._validation`'s per-callable table (registered
below under the class's name), so an error names the group and the field
("``RunOptions.epochs`` must be ..."), then the rules between fields of one group.

:func:`resolve_options` turns a call's groups -- and, for one release, the old flat
keywords (``epochs=2``), with a :class:`DeprecationWarning` naming the group to use --
into the three groups the driver reads.
"""

from __future__ import annotations

import difflib
import os
import warnings
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Callable

from .. import _validation as V
from .. import streaming  # noqa: F401  (registers the ``weighting`` constraint)
from ._hooks import GramHooks

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .._accumulator import Accumulator

#: The release that stops accepting the old flat keywords.
REMOVAL = "0.3"


def _integer(low):
    return lambda value, name: V.check_int(value, name, low)


def _optional(constraint):
    return lambda value, name: None if value is None else constraint(value, name)


def _select(value, name):
    if value is None or callable(value) or (
            isinstance(value, dict) and all(callable(f) for f in value.values())):
        return value
    raise TypeError(f"{name} must be a callable, a dict layer name -> callable, or None; "
                    f"got {value!r}")


def _pooling(value, name):
    return value if callable(value) else V.CALLABLE_PARAMS["GramHooks"]["pooling"](value, name)


def _hooks(value, name):
    pair = value if isinstance(value, tuple) else (value,)
    if value is None or (len(pair) in (1, 2) and all(isinstance(h, GramHooks) for h in pair)):
        return value
    raise TypeError(f"{name} must be a GramHooks (one model) or a pair of GramHooks "
                    f"(model_a's, model_b's); got {value!r}")


def _sigma(value, name):
    if isinstance(value, dict):
        return {str(k): V.Positive()(v, f"{name}[{k!r}]") for k, v in value.items()}
    return V.Positive(none_ok=True)(value, name)


def _path(value, name):
    if value is None or isinstance(value, (str, os.PathLike)):
        return value
    raise TypeError(f"{name} must be a file path (str or os.PathLike) or None; got {value!r}")


def _accumulator(value, name):
    feed = "update_features" if getattr(value, "CONSUMES", None) == "features" else "update_grams"
    if value is None or all(hasattr(value, a) for a in (feed, "sync", "CONSUMES", "started")):
        return value
    raise TypeError(f"{name} must be a repsim accumulator with update_grams (a MinibatchCKA) "
                    "or consuming features with update_features (a FeatureMoments); got "
                    f"{type(value).__name__}")


V.register_params(
    "CaptureOptions", select=_select, pooling=_pooling,
    repeated=V.CALLABLE_PARAMS["GramHooks"]["repeated"], transform=V.PARAMS["transform"],
    forward=V.PARAMS["forward"], eval_mode=V.Flag(), hooks=_hooks)
V.register_params(
    "StatisticsOptions", kernel=V.PARAMS["kernel"], sigma=_sigma,
    threshold=V.PARAMS["threshold"], weighting=V.PARAMS["weighting"],
    groups=_optional(_integer(2)), level=lambda value, name: V.check_level(value, name))
V.register_params(
    "RunOptions", epochs=_integer(1), seed=_integer(0), checkpoint=_path,
    checkpoint_every=_integer(1), engine=V.PARAMS["engine"], accumulator=_accumulator)


def _validate(options: Any) -> None:
    """Check (and store the canonical value of) every field against its constraint."""
    owner = type(options).__name__
    table = V.CALLABLE_PARAMS[owner]
    for f in fields(options):
        object.__setattr__(options, f.name,
                           table[f.name](getattr(options, f.name), f"{owner}.{f.name}"))


def changed(options: Any, ignore: tuple[str, ...] = ()) -> list[str]:
    """The fields of ``options`` that differ from their defaults, in declaration order."""
    return [f.name for f in fields(options) if f.name not in ignore
            and getattr(options, f.name) is not f.default and getattr(options, f.name) != f.default]


@dataclass(frozen=True, kw_only=True)
class CaptureOptions:
    """What the hooks of :func:`repsim.compare_models` capture, and how the models run.

    Parameters
    ----------
    select : callable or dict name -> callable, optional
        Picks the tensor to compare from a module's output (tuple, dict or dataclass
        outputs), e.g. ``lambda out: out.last_hidden_state``; a dict gives one per layer.
        Default: a tensor as is, a tuple's or list's first element.
    pooling : str or callable, default "flatten"
        How a ``(n, ...)`` output becomes ``(n, features)``: one of
        :data:`repsim.adapters.pooling.POOLINGS` (``"spatial_mean"``, ``"masked_mean"``,
        ``"cls"``, ``"tokens"``, ...; see :class:`repsim.GramHooks`) or a callable.
        ``compare_models(pooling=...)`` sets it too.
    repeated : {"error", "index"}, default "error"
        A module that runs several times in one forward: ``"error"`` raises naming it;
        ``"index"`` compares each call as its own layer, ``"name:0"``, ``"name:1"``, ...
    transform : callable, optional
        ``(n, features) -> (n, features')`` applied before each gram (e.g.
        :func:`repsim.standardize_features`).
    forward : callable, optional
        ``forward(model, batch) -> output`` for other batch layouts or entry points
        (``lambda m, b: m.encode(b)``).
    eval_mode : bool, default True
        Put the models in eval mode for the comparison (every module's training flag is
        restored afterwards). Forward passes always run under ``torch.inference_mode``.
    hooks : GramHooks or (GramHooks, GramHooks), optional
        Hooks built beforehand (a pair for two models) instead of ``layers_a``,
        ``layers_b``, ``select``, ``pooling``, ``repeated`` and ``transform``, which must
        then be left at their defaults. Within one model the result is symmetric over
        the hooks' layers.

    Raises
    ------
    ValueError, TypeError
        Naming ``CaptureOptions.<field>`` for a bad value, or ``hooks`` beside the options
        they replace.

    Examples
    --------
    >>> from repsim import CaptureOptions
    >>> CaptureOptions(pooling="spatial_mean", repeated="index")
    CaptureOptions(select=None, pooling='spatial_mean', repeated='index', transform=None,
                   forward=None, eval_mode=True, hooks=None)
    >>> CaptureOptions(repeated="twice")
    Traceback (most recent call last):
    ...
    ValueError: CaptureOptions.repeated must be one of 'error', 'index'; got 'twice'
    """

    select: Callable[[Any], Any] | dict[str, Callable[[Any], Any]] | None = None
    pooling: str | Callable[[torch.Tensor], torch.Tensor] = "flatten"
    repeated: str = "error"
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    forward: Callable[[nn.Module, Any], Any] | None = None
    eval_mode: bool = True
    hooks: GramHooks | tuple[GramHooks, GramHooks] | None = None

    def __post_init__(self) -> None:
        _validate(self)
        clash = changed(self, ignore=("forward", "eval_mode", "hooks"))
        if self.hooks is not None and clash:
            raise ValueError(f"CaptureOptions: pass either hooks or {clash}, not both (set "
                             "them on the GramHooks)")


@dataclass(frozen=True, kw_only=True)
class StatisticsOptions:
    """What :func:`repsim.compare_models` estimates, besides the flat ``estimator``.

    Parameters
    ----------
    kernel : {"linear", "rbf"}, default "linear"
    sigma : float or dict name -> float, optional
        RBF bandwidth (``kernel="rbf"`` only); default: the median heuristic calibrated on
        the first batch. Under torch.distributed an RBF comparison needs it explicitly.
    threshold : float, default 1.0
        Fraction of the median distance for the median heuristic.
    weighting : {"pairs", "batches"}, default "pairs"
        How ragged batches are weighted: ``"pairs"`` (the official code's sums, batch
        ``t`` weighted by ``n_t (n_t - 3)``) or ``"batches"`` (Nguyen et al. eq. 3).
    groups : int, optional
        Also keep the sums of ``groups`` (>= 2) disjoint sets of batches (batch ``t`` of the
        whole run, across epochs and processes, goes to group ``t % groups``) and return
        a standard error and a ``level`` interval for every entry (delete-a-group
        jackknife, :meth:`repsim.MinibatchCKA.compute`).
    level : float, default 0.9
        Confidence level of those intervals.

    Raises
    ------
    ValueError
        Naming ``StatisticsOptions.<field>`` for a bad value, or ``sigma`` with the linear
        kernel.

    Examples
    --------
    >>> from repsim import StatisticsOptions
    >>> StatisticsOptions(groups=5, level=0.95).groups
    5
    >>> StatisticsOptions(groups=1)
    Traceback (most recent call last):
    ...
    ValueError: StatisticsOptions.groups must be an integer >= 2; got 1
    """

    kernel: str = "linear"
    sigma: float | dict[str, float] | None = None
    threshold: float = 1.0
    weighting: str = "pairs"
    groups: int | None = None
    level: float = 0.9

    def __post_init__(self) -> None:
        _validate(self)
        V.check_sigma_kernel(self.sigma, self.kernel, "StatisticsOptions.sigma")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How :func:`repsim.compare_models` runs the loader: passes, seed, checkpoints, and
    the accumulator the batches go into.

    Parameters
    ----------
    epochs : int, default 1
        Passes over the loader (Nguyen et al. use 10 with random augmentation); more than
        one needs a loader that can be iterated again.
    seed : int, default 0
        torch's global RNG is seeded from ``(seed, epoch)`` at the start of every epoch, so
        a shuffling DataLoader repeats its order (and a resumed run continues exactly);
        the caller's RNG state is restored afterwards.
    checkpoint : str or os.PathLike, optional
        File to save the accumulator state in every ``checkpoint_every`` batches and at
        each epoch's end (atomically). If it exists when the call starts, the comparison
        resumes from it; a finished one returns its result at once. The same comparison
        is required -- layers, options, every callable by qualified name (lambdas and
        local functions are refused up front), each model's weights -- otherwise a
        ValueError lists what differs. Under torch.distributed each process uses
        ``<stem>.rank<r>of<w><ext>``.
    checkpoint_every : int, default 50
        Batches between checkpoints.
    engine : {"auto", "numpy", "numba"}, default "auto"
        Centring engine of the :class:`repsim.MinibatchCKA` built for the run.
    accumulator : repsim.MinibatchCKA or repsim.FeatureMoments, optional
        A fresh accumulator to fill instead of the one built from ``estimator``,
        ``precision``, :class:`StatisticsOptions` (but ``level``) and ``engine``, which
        must then be left at their defaults. One that consumes features
        (:class:`repsim.FeatureMoments`) gets each layer's pooled activations; the result
        is its ``compute()`` and the filled accumulator gives the other measures.

    Raises
    ------
    ValueError, TypeError
        Naming ``RunOptions.<field>`` for a bad value, or ``engine`` beside
        ``accumulator``.

    Examples
    --------
    >>> from repsim import RunOptions
    >>> RunOptions(epochs=10, checkpoint="state.pt").checkpoint_every
    50
    >>> RunOptions(epochs=0)
    Traceback (most recent call last):
    ...
    ValueError: RunOptions.epochs must be an integer >= 1; got 0
    """

    epochs: int = 1
    seed: int = 0
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int = 50
    engine: str = "auto"
    accumulator: Accumulator | None = None

    def __post_init__(self) -> None:
        _validate(self)
        if self.accumulator is not None and self.engine != "auto":
            raise ValueError("RunOptions: pass either accumulator or engine, not both (set "
                             "the engine on the accumulator)")


GROUPS: dict[str, type] = {"capture": CaptureOptions, "statistics": StatisticsOptions,
                           "run": RunOptions}


def _unexpected(key: str, flat: tuple[str, ...]) -> TypeError:
    owner = {f.name: arg for arg, cls in GROUPS.items() for f in fields(cls)}
    close = difflib.get_close_matches(key, [*flat, *GROUPS, *owner], n=1, cutoff=0.6)
    hint = ""
    if close:
        c = close[0]
        hint = (f"; did you mean {c!r} ({owner[c]}=repsim.{GROUPS[owner[c]].__name__}"
                f"({c}=...))?" if c in owner else f"; did you mean {c!r}?")
    return TypeError(f"compare_models() got an unexpected keyword argument {key!r}{hint}")


def resolve_options(groups: dict[str, Any], deprecated: dict[str, Any],
                    pooling: Any, flat: tuple[str, ...] = ()) -> tuple[Any, Any, Any]:
    """``(capture, statistics, run)`` of one call: the groups given (each defaulting to its
    class's defaults), the old flat keywords moved into their group with a
    DeprecationWarning, and the everyday ``pooling=`` set on the capture group.

    Raises
    ------
    TypeError
        For an unknown keyword (with the nearest name), a group of the wrong class, or
        flat keywords beside their group.
    ValueError
        For ``pooling=`` beside prebuilt hooks or another ``CaptureOptions.pooling``.
    """
    owner = {f.name: arg for arg, cls in GROUPS.items() for f in fields(cls)}
    moved: dict[str, dict[str, Any]] = {}
    for key, value in deprecated.items():
        if key not in owner:
            raise _unexpected(key, flat)
        moved.setdefault(owner[key], {})[key] = value
    groups = dict(groups)
    for arg, kw in moved.items():
        name = GROUPS[arg].__name__
        call = ", ".join(f"{k}=..." for k in kw)
        if groups[arg] is not None:
            raise TypeError(f"compare_models() got {call} beside {arg}=: pass them inside "
                            f"{arg}=repsim.{name}(...)")
        warnings.warn(f"compare_models({call}) is deprecated and will be removed in repsim "
                      f"{REMOVAL}; pass {arg}=repsim.{name}({call}) instead",
                      DeprecationWarning, stacklevel=V.user_stacklevel())
        groups[arg] = GROUPS[arg](**kw)
    for arg, cls in GROUPS.items():
        if groups[arg] is None:
            groups[arg] = cls()
        elif not isinstance(groups[arg], cls):
            raise TypeError(f"{arg} must be a repsim.{cls.__name__}; got "
                            f"{type(groups[arg]).__name__}")
    capture = groups["capture"]
    if pooling is not None:
        pooling = _pooling(pooling, "pooling")
        if capture.hooks is not None:
            raise ValueError("pass either CaptureOptions.hooks or pooling=, not both (set "
                             "the pooling on the GramHooks)")
        if capture.pooling not in ("flatten", pooling):
            raise ValueError(f"pooling={pooling!r} contradicts CaptureOptions.pooling="
                             f"{capture.pooling!r}; pass one of them")
        capture = replace(capture, pooling=pooling)
    return capture, groups["statistics"], groups["run"]
