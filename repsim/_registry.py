"""The one registry of repsim's measures: every measure is declared once, beside its function.

A module that defines a measure function declares it with :func:`declare`, right below
the function::

    declare(
        shape_distance,
        constraints={"alpha": V.Satisfies(_check_alpha), "score": V.Options("angular", "euclidean")},
        prepare=_prepare_centred, pair=_pair_shape, moments=("alpha", "score"),
        measures=[
            Measure("procrustes_angular", {"alpha": 1.0}, aliases=("procrustes",),
                    repository=("procrustes-angular",), kind="metric", range="[0, pi/2]", ...),
        ],
    )

One declaration holds everything that repsim knows about the function and its named
variants (the rows of :func:`repsim.measures`):

* per-callable parameter constraints (scikit-learn's ``_parameter_constraints``: the
  same parameter name may mean different things for different functions); defaults are
  read from the function's signature, never typed again;
* how it computes: a per-layer ``prepare(x, name, **options)`` (centred gram, k-NN lists,
  RDM, SVD basis, moments) and a ``pair(prep_a, prep_b, **options)``, or a ``matrix``
  all-pairs path (``repsim.cka_matrix``), the parameters of its exact streaming form
  (``moments``: :meth:`repsim.FeatureMoments.compute`), and its packed centred-gram form
  (``gram``: :class:`GramForm`, the fast path of :mod:`repsim.stats`);
* per measure: canonical name, aliases, the ids of the similarity repository's naming
  grammar (Cloos et al. 2024), kind, range, invariances, symmetry, streaming, cost,
  definition, reference and chance level.

Everything else -- :func:`repsim.measures`, the user guide's table, the ``repsim``
command's ``--measure`` choices, :func:`repsim.similarity_matrix`,
:meth:`repsim.FeatureMoments.compute`, the statistics' gram fast paths and the
neighbour-matrix choices -- is derived from here. This module imports no measure module at import time; :func:`load` imports the
modules that declare measures (:data:`MODULES`) on first use.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

INVARIANCES = ("orthogonal", "isotropic_scaling", "invertible_linear", "translation")

#: The modules whose import declares measures (imported by :func:`load`).
MODULES = ("cka", "cca_family", "shape", "regression", "rdm", "_neighbour_registry", "overlap")


@dataclass(frozen=True)
class Measure:
    """One named measure: a function with preset options, and what is known about it.

    Calling it, ``measure(x, y, **options)``, calls the function with the preset options
    (overridden by ``options``). ``function`` is the name of the public ``repsim``
    function; ``family`` (set by :func:`declare`) the function's declaration.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "similarity"
    range: str = "[0, 1]"
    invariances: tuple = ()
    symmetric: bool = True
    streaming: str = "all examples"
    cost: str = ""
    definition: str = ""
    reference: str = ""
    chance: str = "permutation null"
    aliases: tuple = ()
    repository: tuple = ()
    function: str = ""
    family: Any = field(default=None, repr=False, compare=False)
    order: tuple = field(default=(), repr=False, compare=False)

    def __call__(self, x, y, **options):
        return self.family.function(x, y, **{**self.options, **options})

    @property
    def __name__(self) -> str:  # so that stats and plots label it by its measure name
        return self.name

    @property
    def repository_id(self) -> str:
        """The first similarity-repository id of this measure ("" when it has none)."""
        return self.repository[0] if self.repository else ""

    def is_symmetric(self, bound: Mapping[str, Any]) -> bool:
        """Whether this measure with the bound options is symmetric in ``(x, y)``."""
        when = self.family.symmetric_when
        return self.symmetric and (when is None or bool(when(bound)))

    def bind(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every parameter of the function: signature defaults, then this measure's
        preset options, then ``options`` -- unknown names refused with the nearest
        suggestion, values checked (and value aliases such as ``"debiased"`` resolved)
        by the function's constraints."""
        return self.family.bind({**self.options, **options}, self.name)


@dataclass(frozen=True)
class GramForm:
    """A measure function whose value is the CKA of packed centred grams
    (:func:`repsim._pairs.prepare_pair` with the call's ``options``, paired as
    :func:`repsim.cka_matrix` pairs them).

    :func:`repsim.stats.bootstrap` and :func:`repsim.stats.permutation_test` then form each
    layer's centred gram once and index it per resample or permutation, instead of calling
    the function again; they find the form here for the function, for a
    :func:`repsim.measure` object of it and for :func:`functools.partial` of either.

    Attributes
    ----------
    options : tuple of str
        The function's parameters that ``prepare_pair`` takes (``kernel``, ``estimator``,
        ...), passed on with the call's values.
    matrix : callable, optional
        The public all-pairs function of the same form, ``matrix(xs, ys=None, **options)``
        (:func:`repsim.cka_matrix`): its calls take the gram path too.
    recompute : callable, optional
        ``recompute(bound) -> bool`` with every argument of a call of the function (the
        data as plain arrays): True where recomputing the function on each subsample is
        cheaper than indexing ``n x n`` grams (CKA's feature-space path).
    """

    options: tuple
    matrix: Callable | None = None
    recompute: Callable | None = None


@dataclass(frozen=True)
class Family:
    """The declaration of one measure function (see :func:`declare`)."""

    function: Callable
    constraints: Mapping[str, Callable]
    prepare: Callable | None = None
    pair: Callable | None = None
    matrix: Callable | None = None
    moments: tuple | None = None
    moment_options: Mapping[str, tuple] = field(default_factory=dict)
    symmetric_when: Callable | None = None
    measures: tuple = ()
    gram: GramForm | None = None
    blocks: str | None = None
    blocks_when: Callable | None = None

    @property
    def name(self) -> str:
        return self.function.__name__

    def defaults(self) -> dict[str, Any]:
        """Keyword parameters of the function and their defaults (from its signature)."""
        params = list(inspect.signature(self.function).parameters.values())[2:]
        return {p.name: p.default for p in params
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    @property
    def symmetric(self) -> bool:
        """Whether every declared variant of the function is symmetric in ``(x, y)``."""
        return all(m.symmetric for m in self.measures)

    def check(self, name: str, value: Any) -> Any:
        constraint = self.constraints.get(name)
        return value if constraint is None else constraint(value, name)

    def bind(self, options: Mapping[str, Any], label: str | None = None) -> dict[str, Any]:
        defaults = self.defaults()
        unknown = [k for k in options if k not in defaults]
        if unknown:
            key = unknown[0]
            hint = did_you_mean(key, defaults)
            raise TypeError(f"{label or self.name} (repsim.{self.name}) takes the options "
                            f"{sorted(defaults)}; got unknown option {key!r}{hint}")
        out = {**defaults, **options}
        for key in options:
            out[key] = self.check(key, out[key])
        return out


_FAMILIES: dict[str, Family] = {}
_MEASURES: dict[str, Measure] = {}
_LOOKUP: dict[str, str] = {}
_LOADED = False


def declare(function: Callable, *, constraints: Mapping[str, Callable] | None = None,
            prepare: Callable | None = None, pair: Callable | None = None,
            matrix: Callable | None = None, moments: tuple | None = None,
            moment_options: Mapping[str, tuple] | None = None,
            symmetric_when: Callable | None = None,
            measures: tuple | list = (), gram: GramForm | None = None,
            blocks: str | None = None, blocks_when: Callable | None = None) -> Callable:
    """Declare a measure function and its named variants; returns ``function``.

    Parameters
    ----------
    function : callable
        ``function(x, y, **options) -> scalar``, a public ``repsim`` function.
    constraints : dict parameter -> constraint, optional
        Per-callable checks of its options (:mod:`repsim._validation` constraints:
        ``Options``, ``Positive``, ``Flag``, ``Satisfies``, ...).
    prepare, pair : callable, optional
        ``prepare(x, name, **options)`` does the per-layer work once; ``pair(prep_a,
        prep_b, **options)`` gives the same value as ``function(x, y, **options)``.
        Without them, :func:`repsim.similarity_matrix` calls ``function`` per pair.
    matrix : callable, optional
        ``matrix(arrays_a, arrays_b_or_None, **options) -> (L_a, L_b) array``: an
        all-pairs path (one product for all pairs).
    moments : tuple of str, optional
        The parameters (read from the signature) that its exact streaming form
        (:meth:`repsim.FeatureMoments.compute`) takes; None: no such form.
    moment_options : dict name -> (default, constraint), optional
        Parameters of the streaming form only (the canonical ridge of the CCA family).
    symmetric_when : callable, optional
        ``symmetric_when(options) -> bool``: whether a symmetric measure stays symmetric
        with these (bound) options (SVCCA with a different ``keep`` per side does not).
    measures : sequence of Measure
        Its named variants.
    gram : GramForm, optional
        Its packed centred-gram form (the statistics' fast path); None: none.
    blocks : {"gram", "distance", "rdm", "neighbour_lists"}, optional
        Its exact full-data form from pairs of example blocks, through which stores larger
        than memory stream (:mod:`repsim.store_blocks`): CKA's kernel grams, the distance
        kernel (dcor), sums of RDM entries (Pearson RSA), merged k-NN lists; None: none.
    blocks_when : callable, optional
        ``blocks_when(options) -> str``: why these (bound) options have no such form ("" when
        they have it), such as RSA's rank comparisons.
    """
    family = Family(function, dict(constraints or {}), prepare, pair, matrix,
                    None if moments is None else tuple(moments), dict(moment_options or {}),
                    symmetric_when, gram=gram, blocks=blocks, blocks_when=blocks_when)
    import sys

    caller = sys._getframe(1).f_globals.get("__name__", "").rpartition(".")[2]
    where = MODULES.index(caller) if caller in MODULES else len(MODULES)
    rows = tuple(replace(m, function=function.__name__, family=family,
                         order=(where, len(_MEASURES) + i)) for i, m in enumerate(measures))
    object.__setattr__(family, "measures", rows)
    defaults = family.defaults()
    for key in (*family.constraints, *(gram.options if gram else ())):
        if key not in defaults:
            raise ValueError(f"{function.__name__}: constraint or gram option {key!r}, which "
                             "is not a parameter of the function")
    _FAMILIES[function.__name__] = family
    from . import _validation as V  # the one table of constraints, per callable

    V.register_params(function.__name__, **{k: c for k, c in family.constraints.items()
                                            if not getattr(c, "aliases", None)})
    for m in rows:
        bad = [k for k in m.options if k not in defaults]
        if bad:
            raise ValueError(f"measure {m.name!r}: {bad} are not options of {function.__name__}")
        for key in (m.name, *m.aliases, *m.repository):
            if key in _LOOKUP and _LOOKUP[key] != m.name:
                raise ValueError(f"measure name {key!r} is declared twice "
                                 f"({_LOOKUP[key]!r} and {m.name!r})")
            _LOOKUP[key] = m.name
        _MEASURES[m.name] = m
    return function


def load() -> None:
    """Import every module that declares measures (once)."""
    global _LOADED
    if not _LOADED:
        for module in MODULES:
            importlib.import_module(f"repsim.{module}")
        _LOADED = True


def all_measures() -> list[Measure]:
    """Every declared measure, in declaration order (modules in :data:`MODULES` order)."""
    load()
    return sorted(_MEASURES.values(), key=lambda m: m.order)


def families() -> dict[str, Family]:
    """Function name -> declaration, for every declared function."""
    load()
    return dict(_FAMILIES)


def did_you_mean(name: str, choices) -> str:
    """``"; did you mean 'x'?"`` for the nearest of ``choices`` (difflib), else ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def resolve(name: Any) -> Measure:
    """The measure that ``name`` (canonical name, alias or similarity-repository id;
    a :class:`Measure` passes through) refers to.

    Raises
    ------
    ValueError
        An unknown name, with the nearest known one.
    """
    if isinstance(name, Measure):
        return name
    load()
    if not isinstance(name, str):
        raise TypeError(f"measure must be a measure name (str); got {type(name).__name__}")
    key = name.strip()
    if key.startswith("measure/"):  # the similarity repository's namespaced form
        key = key.split("/")[-1]
    canonical = _LOOKUP.get(key) or _LOOKUP.get(key.lower())
    if canonical is None:
        raise ValueError(f"unknown measure {name!r}{did_you_mean(key, _LOOKUP)} "
                         f"(repsim.measure_names() lists them)")
    return _MEASURES[canonical]


def names(kind: str = "canonical") -> dict[str, str] | list[str]:
    """Canonical names (``kind="canonical"``), or every accepted name mapped to its
    canonical one (``"all"``)."""
    load()
    if kind == "canonical":
        return [m.name for m in all_measures()]
    return dict(_LOOKUP)


def moment_family(measure: str) -> tuple[Family, dict[str, Any]]:
    """The function declaration and preset options behind ``FeatureMoments.compute``'s
    ``measure``: any name of a measure with a streaming form (``"procrustes_angular"``,
    ``"ridge_r2"`` with its preset ridge), else a function name with one (``"cka"``,
    ``"shape_distance"``: the function's defaults). A measure's name wins where it is also
    a function's, so ``compute(name)`` equals ``repsim.compare(x, y, name)``."""
    load()
    streaming = {k: f for k, f in _FAMILIES.items() if f.moments is not None}
    try:  # a measure's name wins over a function's: "ridge_r2" is the measure (ridge 0.1)
        m = resolve(measure)
    except (ValueError, TypeError):
        m = None
    if (m is None or m.family.moments is None) and measure in streaming:
        return streaming[measure], {}
    if m is None or m.family.moments is None:
        choices = sorted(streaming)
        raise ValueError(f"measure must be one of {', '.join(repr(c) for c in choices)} (or a "
                         f"measure name with an exact streaming form); got {measure!r}"
                         f"{did_you_mean(measure, choices)}")
    return m.family, dict(m.options)


def moment_params(measure: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(function name, parameters)`` of ``FeatureMoments.compute(measure, **params)``:
    ``measure`` resolved by :func:`moment_family` (a preset outside the streaming form,
    such as ``cka_rbf``'s kernel, is refused), the streaming parameters (``moments`` and
    ``moment_options``) defaulted from the signature and checked by the constraints."""
    family, preset = moment_family(measure)
    defaults = family.defaults()
    allowed = {k: defaults[k] for k in family.moments or ()}
    allowed.update({k: d for k, (d, _) in family.moment_options.items()})
    fixed = {k: v for k, v in preset.items() if k not in allowed and v != defaults.get(k)}
    if fixed:
        raise ValueError(f"measure={measure!r} has no exact streaming form (its options "
                         f"{fixed} are not moments); use the full-data function")
    given = {**{k: v for k, v in preset.items() if k in allowed}, **params}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise TypeError(f"measure={measure!r} takes the parameters {sorted(allowed)}; "
                        f"got unknown {unknown}{did_you_mean(unknown[0], allowed)}")
    p = {**allowed, **given}
    for key in given:
        extra = family.moment_options.get(key)
        p[key] = extra[1](p[key], key) if extra else family.check(key, p[key])
    keep = p.get("keep")
    if isinstance(keep, (tuple, list)) and len(keep) != 2:
        raise ValueError(f"keep must be one value or a pair (keep_x, keep_y); got {keep!r}")
    return family.name, p


def pair_value(function: str, x, y, **options):
    """``pair(prepare(x), prepare(y))`` of a declared function: the body of a measure
    defined by its declaration alone (:mod:`repsim.overlap`)."""
    from . import _backend as B
    from . import _validation as V

    load()
    family = _FAMILIES[function]
    opts = family.bind(options)
    x, y = B.asarray(x, "x"), B.asarray(y, "y")
    B.namespace(x, y, names=["x", "y"])
    if len(x.shape) >= 1 and len(y.shape) >= 1:
        V.check_same_n(int(x.shape[0]), int(y.shape[0]), "x", "y", x.shape, y.shape)
    assert family.prepare is not None and family.pair is not None
    return family.pair(family.prepare(x, "x", **opts), family.prepare(y, "y", **opts), **opts)
