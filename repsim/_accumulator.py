"""The base of every streaming accumulator: states declared once, everything else derived.

An accumulator (:class:`repsim.MinibatchCKA`, and any later one such as a feature-moment
accumulator with ``sum_x`` of shape ``(D,)``, ``xtx`` of shape ``(D, D)`` and scalar
counts) keeps *sum states*: arrays whose value after a set of batches is the sum of their
values over disjoint subsets of those batches. Declaring them once, as torchmetrics'
``add_state`` does, is enough to derive the rest generically:

- :meth:`Accumulator.reset`, :meth:`Accumulator.merge` (adds the states of another
  accumulator of the same computation), :meth:`Accumulator.state_dict` /
  :meth:`Accumulator.load_state_dict` (every key, shape, dtype and option validated before
  anything is assigned, so a refused state never leaves a half-loaded object) and
  :meth:`Accumulator.sync` (applies a caller's collective, e.g.
  ``torch.distributed.all_reduce``, to each state);
- the PyTorch adapter's all-reduce and checkpoints, which call ``acc.sync(...)``,
  ``acc.state_dict()`` and ``acc.load_state_dict(...)`` and know nothing of the fields.

How a subclass plugs in
-----------------------
``STATES``
    A tuple of :class:`State`: name, shape as a tuple of dimension names (or ints), dtype
    (``"float64"`` or ``"int64"``), reduction (``"sum"``) and optionally ``when``, the
    name of an option that must be truthy for the state to exist (per-group sums only
    with ``groups=G``).
``LAYOUT``
    Names of the attributes fixed by the first batch (layer names, calibrated
    bandwidths); all None before it. They are metadata, compared by :meth:`merge` and
    stored in :meth:`state_dict`.
``_options()``
    The construction options that identify the computation (plain, picklable values;
    callables through :func:`callable_identity`); :meth:`merge`, :meth:`load_state_dict`
    and :meth:`sync` refuse another accumulator whose options differ, naming each one.
``_dims(layout)``
    The sizes of the dimension names, computed from a layout dict (so an incoming state
    is checked against *its own* layout before anything is assigned).
``_check_layout(layout)`` (optional)
    Type checks of an incoming layout.

The subclass's ``update`` computes one batch's contributions (touching nothing until all
its checks pass), calls :meth:`_start` on the first batch with the layout and the arrays'
library and device, and adds into ``self._values[name]``. The states live on the device
of the first batch's arrays, in its library (numpy, or torch on CPU or GPU); bookkeeping
such as counts is declared too, so nothing of the state lives beside the table.

A moment accumulator, for example, declares ``State("sum_x", ("d",))``,
``State("xtx", ("d", "d"))``, ``State("n", (), "int64")``, ``LAYOUT = ("names",)`` and
``_dims = lambda self, layout: {"d": len(layout["names"])}``, and inherits merging,
checkpoints and ``sync`` unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar

import numpy as np

from . import _backend as B

REDUCTIONS = ("sum",)
_A = TypeVar("_A", bound="Accumulator")
DTYPES = ("float64", "int64")


@dataclass(frozen=True)
class State:
    """One declared state of an accumulator.

    Parameters
    ----------
    name : str
        Key in ``state_dict()`` and in ``_values``.
    shape : tuple of str or int
        Dimension names resolved by the accumulator's ``_dims(layout)`` (``()`` for a
        scalar).
    dtype : {"float64", "int64"}
        float64 sums are finite and int64 ones are counts (never negative):
        :meth:`Accumulator.load_state_dict` refuses any other value.
    reduction : {"sum"}
        How states of disjoint batches combine (merge, all-reduce).
    when : str, optional
        Name of an option; the state exists only when ``_options()[when]`` is truthy.
    """

    name: str
    shape: tuple = ()
    dtype: str = "float64"
    reduction: str = "sum"
    when: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES or self.reduction not in REDUCTIONS:
            raise ValueError(f"state {self.name!r}: dtype must be in {DTYPES} and reduction "
                             f"in {REDUCTIONS}; got {self.dtype!r}, {self.reduction!r}")


def _has_address(text: str) -> bool:
    return " at 0x" in text


def callable_identity(fn: Any) -> tuple[str, bool]:
    """A text that identifies a callable option, and whether it is portable.

    Functions, classes and builtins are identified by ``module.qualname`` (portable: the
    same text in a new process); :func:`functools.partial` by its function and the reprs
    of its arguments; bound methods by their function and the repr of their object; other
    callable objects by their class and repr. Lambdas, functions defined inside other
    functions and objects whose repr holds a memory address cannot be found again by a
    new process: their text carries ``id()`` (so two different ones never compare equal)
    and ``portable`` is False.

    Parameters
    ----------
    fn : callable or None

    Returns
    -------
    identity : str
    portable : bool
    """
    if fn is None:
        return "None", True
    if isinstance(fn, functools.partial):
        inner, portable = callable_identity(fn.func)
        for value in list(fn.args) + [v for _, v in sorted(fn.keywords.items())]:
            text, ok = callable_identity(value) if callable(value) else (repr(value), True)
            portable &= ok and not _has_address(text)
        args = ", ".join([repr(a) if not callable(a) else callable_identity(a)[0] for a in fn.args]
                         + [f"{k}={v!r}" if not callable(v) else f"{k}={callable_identity(v)[0]}"
                            for k, v in sorted(fn.keywords.items())])
        return f"functools.partial({inner}{', ' if args else ''}{args})", portable
    func = getattr(fn, "__func__", None)
    owner = getattr(fn, "__self__", None)
    if func is not None and owner is not None and not isinstance(owner, type(B)):  # bound method
        inner, ok = callable_identity(func)
        text = repr(owner)
        return f"{inner} bound to {text}", ok and not _has_address(text)
    qualname = getattr(fn, "__qualname__", None)
    module = getattr(fn, "__module__", None)
    if isinstance(qualname, str) and isinstance(module, str):
        name = f"{module}.{qualname}"
        if "<lambda>" in qualname or "<locals>" in qualname:
            return f"{name} (id {id(fn):#x})", False
        return name, True
    text = repr(fn)
    cls = type(fn)
    name = f"{cls.__module__}.{cls.__qualname__}({text})"
    if _has_address(text):
        return f"{name} (id {id(fn):#x})", False
    return name, True


def library(x: Any) -> str:
    """``"numpy"`` or ``"torch"`` (or the module of another type), for messages."""
    if B.is_numpy(x):
        return "numpy"
    if B.is_torch(x):
        return "torch"
    return type(x).__module__.split(".")[0]


def _describe(x: Any) -> str:
    return f"{library(x)} arrays on {B.device(x)}" if B.is_torch(x) else f"{library(x)} arrays"


def differences(mine: dict, theirs: dict, where: str) -> list[str]:
    """``"key: a here, b <where>"`` for every key whose values differ (missing keys count)."""
    out = []
    for key in sorted(set(mine) | set(theirs), key=str):
        a, b = mine.get(key, "<absent>"), theirs.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: {a!r} here, {b!r} {where}")
    return out


def check_layer_names(layout: dict[str, Any]) -> None:
    """Refuse an incoming layout whose ``names_a``/``names_b`` are not non-empty lists of
    distinct layer names or whose ``symmetric`` is not a bool (the layer accumulators)."""
    for side in ("a", "b"):
        names = layout[f"names_{side}"]
        if not (isinstance(names, (list, tuple)) and names
                and all(isinstance(n, str) for n in names)):
            raise ValueError(f"state['names_{side}'] must be a non-empty list of layer "
                             f"names; got {names!r}")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if list(names).count(n) > 1})
            raise ValueError(f"state['names_{side}'] names a layer twice: {dup}")
    if not isinstance(layout["symmetric"], bool):
        raise ValueError(f"state['symmetric'] must be a bool; got {layout['symmetric']!r}")


class Accumulator:
    """Base of repsim's streaming accumulators; see the module docstring.

    Subclasses set :attr:`STATES` and :attr:`LAYOUT` and implement ``_options`` and
    ``_dims``; ``reset``, ``merge``, ``state_dict``, ``load_state_dict`` and ``sync`` come
    from here.
    """

    STATES: ClassVar[tuple[State, ...]] = ()
    LAYOUT: ClassVar[tuple[str, ...]] = ()
    #: What the PyTorch adapter feeds it (:func:`repsim.compare_models`): ``"grams"``
    #: (``update_grams``, each layer's ``(n, n)`` gram) or ``"features"``
    #: (``update_features``, each layer's pooled ``(n, d)`` activations).
    CONSUMES: ClassVar[str] = "grams"
    #: Layout names that processes may hold differently before :meth:`sync`, which agrees
    #: on them in :meth:`_pre_sync` (a shift); the other layout must match.
    AGREED: ClassVar[tuple[str, ...]] = ()

    _values: dict[str, Any]

    # ---------------------------------------------------------------- subclass hooks
    def _options(self) -> dict[str, Any]:
        raise NotImplementedError

    def _dims(self, layout: dict[str, Any]) -> dict[str, int]:
        raise NotImplementedError

    def _check_layout(self, layout: dict[str, Any]) -> None:
        """Refuse a malformed incoming layout (subclasses add their checks)."""

    def _pre_merge(self, other: Any) -> Any:
        """Hook: ``other`` (already checked to be of this class and computation) as
        :meth:`merge` should add it -- e.g. its sums re-expressed on this accumulator's
        shift. Default: ``other`` itself."""
        return other

    def _pre_sync(self, all_reduce: Callable[[Any], Any], world: int) -> None:
        """Hook run by :meth:`sync` on every process once all are known to hold states of
        the same options and layout (up to :attr:`AGREED`), with the collective and the
        number of processes ``world``, before the states are summed: agree on the
        :attr:`AGREED` layout (e.g. a common shift) and re-express the states on it.
        Default: nothing."""

    def _invalidate(self) -> None:
        """Hook: drop caches derived from the layout (called by :meth:`reset` and
        :meth:`load_state_dict` after they change it). Default: nothing."""

    # ---------------------------------------------------------------- the table
    def _declared(self, options: dict[str, Any] | None = None) -> tuple[State, ...]:
        options = self._options() if options is None else options
        return tuple(s for s in self.STATES if s.when is None or options.get(s.when))

    def _shape(self, state: State, dims: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(dims[d]) for d in state.shape)

    def _layout(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.LAYOUT}

    @property
    def started(self) -> bool:
        """Whether a batch (or a state) has been taken in."""
        return bool(self._values)

    def reset(self) -> None:
        """Forget all batches, the layout fixed by the first one and the states."""
        for key in self.LAYOUT:
            setattr(self, key, None)
        self._values = {}
        self._invalidate()

    def _start(self, layout: dict[str, Any], xp: Any, device: Any) -> None:
        """Fix the layout and allocate every declared state as zeros on ``device``."""
        dims = self._dims(layout)
        values = {
            s.name: xp.zeros(self._shape(s, dims), dtype=getattr(xp, s.dtype), device=device)
            for s in self._declared()
        }
        for key in self.LAYOUT:
            setattr(self, key, layout[key])
        self._values = values

    def _check_like(self, x: Any, label: str) -> None:
        """Refuse a batch from another library or device than the states (before use)."""
        if not self._values:
            return
        ref = next(iter(self._values.values()))
        if library(x) != library(ref) or (B.is_torch(x) and B.device(x) != B.device(ref)):
            raise TypeError(
                f"{label} holds {_describe(x)}, but this {type(self).__name__} accumulated "
                f"{_describe(ref)} so far: feed every batch from one library and device "
                "(or reset() first)"
            )

    # ---------------------------------------------------------------- combining
    def merge(self: _A, other: _A) -> _A:
        """Add the states of ``other`` (same class and computation) into this one.

        Exact, because every state is a sum over batches. Refused with a message naming
        what differs: options (kernel, bandwidths, transform, weighting, groups, ...),
        layout (layer names, calibrated bandwidths), or library and device of the states.

        Returns
        -------
        Accumulator
            ``self``.
        """
        if type(other) is not type(self):
            raise TypeError(f"other must be a {type(self).__name__}; got {type(other).__name__}")
        diff = differences(self._options(), other._options(), "in other")
        if diff:
            raise ValueError(f"cannot merge accumulators of different computations: {'; '.join(diff)}")
        if not other.started:
            return self
        other = self._pre_merge(other)
        ref = next(iter(other._values.values()))
        self._check_like(ref, "other")
        if not self.started:
            self.load_state_dict(other.state_dict())
            return self
        diff = differences(self._layout(), other._layout(), "in other")
        if diff:
            raise ValueError(f"cannot merge accumulators with different layers or bandwidths: "
                             f"{'; '.join(diff)}")
        for s in self._declared():
            self._values[s.name] += other._values[s.name]
        return self

    def state_dict(self) -> dict[str, Any]:
        """The options, the layout and a copy of every declared state.

        Keys: ``"class"``, ``"options"`` (a dict), the :attr:`LAYOUT` names and the
        declared states' names (the states only after the first batch). Arrays keep their
        library and device (torch tensors stay tensors, so they can be all-reduced).
        """
        state: dict[str, Any] = {"class": type(self).__name__, "options": self._options()}
        state.update(self._layout())
        for name, value in self._values.items():
            state[name] = B.namespace(value).asarray(value, copy=True)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: everything is validated first, then assigned.

        Raises
        ------
        ValueError
            If a key is missing or unexpected, the options differ (each difference
            named), a state's shape or dtype is not the declared one for the state's own
            layout, or the states mix libraries or devices. The accumulator is left as
            it was.
        """
        name = type(self).__name__
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from {name}.state_dict(); got {type(state).__name__}")
        if state.get("class") != name:
            raise ValueError(f"state was written by {state.get('class')!r}, not by a {name}")
        options = self._options()
        saved = state.get("options")
        diff = differences(options, saved if isinstance(saved, dict) else {}, "in the state")
        if diff:
            raise ValueError(f"state was accumulated with other options: {'; '.join(diff)}")
        layout = {key: state.get(key) for key in self.LAYOUT}
        started = any(v is not None for v in layout.values())
        declared = self._declared(options) if started else ()
        expected = {"class", "options", *self.LAYOUT, *(s.name for s in declared)}
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected, key=str)
        if missing or extra:
            raise ValueError(f"state does not match a {name}: missing keys {missing}, "
                             f"unexpected keys {extra}")
        if started:
            self._check_layout(layout)
            dims = self._dims(layout)
            ref = state[declared[0].name]
            for s in declared:
                value = state[s.name]
                if not (B.is_numpy(value) or B.is_torch(value)):
                    raise ValueError(f"state[{s.name!r}] must be a numpy array or torch tensor; "
                                     f"got {type(value).__name__}")
                if library(value) != library(ref) or B.device(value) != B.device(ref):
                    raise ValueError(f"state[{s.name!r}] holds {_describe(value)} but "
                                     f"state[{declared[0].name!r}] holds {_describe(ref)}")
                want = self._shape(s, dims)
                xp = B.namespace(value)
                if tuple(value.shape) != want or value.dtype != getattr(xp, s.dtype):
                    raise ValueError(
                        f"state[{s.name!r}] must have shape {want} and dtype {s.dtype} for "
                        f"this layout; got shape {tuple(value.shape)} and dtype {value.dtype}"
                    )
                low = B.item(xp.min(value)) if s.dtype == "int64" and math.prod(value.shape) else 0
                if low < 0:
                    raise ValueError(f"state[{s.name!r}] counts must be >= 0; got {low}")
                if s.dtype == "float64" and not B.item(xp.all(xp.isfinite(value))):
                    raise ValueError(f"state[{s.name!r}] holds NaN or Inf: the sums are "
                                     "corrupt (an accumulator never stores them)")
        values = {s.name: B.namespace(state[s.name]).asarray(state[s.name], copy=True)
                  for s in declared}
        for key in self.LAYOUT:
            value = layout[key]
            setattr(self, key, list(value) if isinstance(value, (list, tuple)) else value)
        self._values = values
        self._invalidate()

    def _fingerprint(self) -> int:
        """A 16-bit digest of the options and layout (less :attr:`AGREED`): its squares
        summed over up to 1,000 processes stay exact in float64."""
        layout = {k: v for k, v in self._layout().items() if k not in self.AGREED}
        text = repr((type(self).__name__, sorted(self._options().items()), sorted(layout.items())))
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:2], "big")

    def sync(self: _A, all_reduce: Callable[[Any], Any], *, device: Any = None) -> _A:
        """Sum every declared state over all processes with the caller's collective.

        Parameters
        ----------
        all_reduce : callable
            Sums an array of the states' library over all processes, in place, e.g.
            ``torch.distributed.all_reduce`` (whose default op is a sum). It is called
            once on a small check vector (how many processes take part, how many have
            states, a digest of each one's options and layers, so that every process
            raises the same error instead of hanging), then by :meth:`_pre_sync` (if the
            subclass agrees on part of its layout), then once per declared state.
        device : optional
            Where the check vector lives on a process that has no state yet (NCCL needs a
            CUDA device); default: the states' device, else the CPU.

        Returns
        -------
        Accumulator
            ``self``, holding the sums of all processes.

        Raises
        ------
        ValueError
            If some process has no batches, or the processes' options or layers differ.
        """
        if self._values:
            ref = next(iter(self._values.values()))
            xp, dev = B.namespace(ref), B.device(ref)
        else:
            import torch  # only reached by torch.distributed callers without a batch

            xp = B.namespace(torch.zeros(0))
            dev = torch.device("cpu") if device is None else torch.device(device)
        fp = float(self._fingerprint())
        check = xp.asarray([1.0, float(self.started), fp, fp * fp], dtype=xp.float64, device=dev)
        all_reduce(check)
        world, started, total, squares = (float(v) for v in B.to_numpy(check))
        if started != world:
            raise ValueError(
                f"{int(world - started)} of {int(world)} processes have no batches to "
                "sum; use fewer processes or more batches"
            )
        if world * squares != total * total:  # equal digests <=> zero variance (exact)
            mine = {k: v for k, v in self._layout().items() if k not in self.AGREED}
            raise ValueError(
                "processes accumulated different layers or options; every process must "
                f"hook the same layers with the same options (this one: {mine})"
            )
        self._pre_sync(all_reduce, int(world))
        for s in self._declared():
            all_reduce(self._values[s.name])
        return self


def as_state_array(values: Any, like: Any) -> Any:
    """Host-side per-batch numbers (a numpy vector) in the states' library and device."""
    xp = B.namespace(like)
    return xp.asarray(np.asarray(values, dtype=np.float64), device=B.device(like))
