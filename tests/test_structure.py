"""The package's shape, read from its sources: the module-level import graph is acyclic,
no module is over 500 lines, the package ships ``py.typed``, and no list of measure
names lives outside the measure registry."""

import ast
from pathlib import Path

import repsim
from repsim import _registry as R

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "repsim"


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(module, is_package, node):
    """Absolute names a ``from ... import`` at module level refers to (modules only)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return prefix, [f"{prefix}.{a.name}" for a in node.names]


def import_graph():
    """``module -> set of repsim modules it imports at import time`` (top-level statements
    only: imports inside functions are deliberately lazy and run later)."""
    modules = _modules()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in tree.body:
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                prefix, names = _resolve(module, is_package, node)
                targets = [n for n in names if n in modules] or [prefix]
            for t in targets:
                while t and t not in modules:  # "repsim.adapters.torch.x" -> its module
                    t = t.rpartition(".")[0]
                if t and t != module:
                    graph[module].add(t)
    # (a package importing its own submodules is fine; a submodule importing names from
    # its package's __init__ -- ``from . import helper`` -- is an edge to the package)
    return graph


def _cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_is_acyclic():
    graph = import_graph()
    assert "repsim.cka" in graph["repsim"]  # the graph is really read
    assert "repsim.blocks._reader" in graph["repsim.blocks.declared"]
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_over_500_lines():
    long = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    assert not {m: n for m, n in long.items() if n > 500}


def test_the_package_ships_py_typed():
    assert (PKG / "py.typed").exists()
    text = (ROOT / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]\nrepsim = ["py.typed"]' in text


def _string_lists(tree):
    """Every list/tuple/set literal and dict literal's keys, as lists of str constants --
    except a declaration's own names (``Measure(..., aliases=(...), repository=(...))``)."""
    declared = {id(k.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Measure"
                for k in node.keywords if k.arg in ("aliases", "repository")}
    for node in ast.walk(tree):
        if id(node) in declared:
            continue
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            elts = node.elts
        elif isinstance(node, ast.Dict):
            elts = [k for k in node.keys if k is not None]
        else:
            continue
        yield node.lineno, [e.value for e in elts
                            if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def test_no_measure_name_list_outside_the_registry():
    """A literal holding three or more measure names (canonical names, aliases or
    measure functions) outside the declarations is a second list that can drift."""
    names = set(repsim.measure_names(aliases=True)) | set(R.families())
    offenders = []
    for module, path in _modules().items():
        if module == "repsim":  # __all__: the public names, not a table of measures
            continue
        for line, strings in _string_lists(ast.parse(path.read_text())):
            hits = [s for s in strings if s in names]
            if len(hits) >= 3:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {hits}")
    assert not offenders, "\n".join(offenders)


def test_the_detector_sees_a_list_of_measure_names():
    tree = ast.parse('X = ("cca", "svcca", "pwcca")\nY = {"cka": 1, "rsa": 2, "gulp": 3}\n'
                     'Measure("x", aliases=("cka", "rsa", "gulp"))')
    found = [s for _, s in _string_lists(tree) if s]
    assert ["cca", "svcca", "pwcca"] in found and ["cka", "rsa", "gulp"] in found
    assert found.count(["cka", "rsa", "gulp"]) == 1  # a declaration's aliases are its own


def _function_lines(path, name):
    """Lines of the ``def name`` at the top level of ``path`` (signature, docstring, body)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    return node.end_lineno - node.lineno + 1


def test_compare_models_is_at_most_150_lines():
    """Its options live in three groups (repsim.CaptureOptions, StatisticsOptions,
    RunOptions) and its steps in private helpers, not in one long function."""
    assert _function_lines(PKG / "adapters" / "_compare.py", "compare_models") <= 150
