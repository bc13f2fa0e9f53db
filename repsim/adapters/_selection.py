"""Layer selection for the PyTorch adapter: exact names, glob patterns, module types.

An exact module name always wins over reading the same text as a glob pattern, so a
module called ``blocks.a[0]`` (a ``ModuleDict`` key) is selected as itself, never as the
pattern that would match ``blocks.a0``.
"""

from __future__ import annotations

import difflib
import re
from collections import OrderedDict
from typing import Any

from torch import nn

_GLOB_CHARS = re.compile(r"[*?\[]")

LayerSpec = Any  # None, a name or pattern, an nn.Module subclass, or a list/tuple of them


def unwrap_model(model: nn.Module) -> nn.Module:
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
            model = model._orig_mod  # type: ignore[assignment]
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


def select_layers(model: nn.Module, layers: LayerSpec = None) -> list[str]:
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
          blocks and ``"**"`` every module. A string that is the exact name of a module
          selects that module even if it holds glob characters (``"blocks.a[0]"`` of a
          ``ModuleDict``): the exact match wins over the pattern;
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
    out: OrderedDict[str, None] = OrderedDict()
    for spec in specs:
        if isinstance(spec, str):
            exact = _strip_prefix(spec, modules)
            if exact in modules:  # an exact name wins over its glob reading
                hits = [exact]
            elif _GLOB_CHARS.search(spec):
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
                close = difflib.get_close_matches(exact, list(modules), n=5)
                hint = f"; did you mean {close}?" if close else ""
                raise ValueError(f"layer {spec!r} is not a module of {type(model).__name__}{hint}")
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


