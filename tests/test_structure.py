"""The package's layering, read from its source: no import cycles, no private names across modules.

The import graph is built with :mod:`ast` from every ``nmengine`` module (no module is executed), so the
test sees every import statement, at module level and inside functions alike.  Two rules:

* The graph has no cycle.  The only imports allowed to point back up a layer are the few thin conveniences
  of the IR listed in ``CONVENIENCES`` (``Program.run`` imports the runtime when called, ``Program.cost``
  the cost model, ...); they are function-level imports, checked to stay so.
* No module imports a private (``_name``) name from another ``nmengine`` module, or reads one as an
  attribute of an imported ``nmengine`` module.  The one exception is ``nmengine.kernels``, the wrapper
  of the compiled extension module ``nmengine._core`` (it is private by name only).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nmengine

PKG = Path(nmengine.__file__).resolve().parent

#: Function-level imports from the IR up to the layers that use it (importer, imported): the
#: conveniences ``Program.infer_shapes`` / ``.coverage`` / ``.runtime`` / ``.session`` / ``.run`` / ``.profile`` /
#: ``.cost``.
CONVENIENCES = {
    ("nmengine.program", "nmengine.shapes"),
    ("nmengine.program", "nmengine.coverage"),
    ("nmengine.program", "nmengine.runtime"),
    ("nmengine.program", "nmengine.session"),
    ("nmengine.program", "nmengine.cost"),
}

#: Private modules that may be imported by the one module that wraps them.
PRIVATE_MODULE_OWNERS = {"nmengine._core": {"nmengine.kernels"}}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".") if _is_package(importer) else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (never executed, so not part of the graph)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                for inner in ast.walk(sub):
                    skip.add(id(inner))
    return skip


def _imports(name: str) -> list[tuple[str, str | None, bool, int]]:
    """(imported module, imported attribute name or None, at module level?, line) of every import."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    top = {id(n) for n in tree.body}
    for node in tree.body:  # module-level try/if blocks are still module level
        if isinstance(node, (ast.Try, ast.If)):
            for inner in ast.walk(node):
                if not isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    top.add(id(inner))
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, None, id(node) in top, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(name, node.level, node.module)
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in MODULES or sub == "nmengine._core":  # `from . import runtime`: a module
                    out.append((sub, None, id(node) in top, node.lineno))
                else:
                    out.append((mod, a.name, id(node) in top, node.lineno))
    return [o for o in out if o[0] == "nmengine" or o[0].startswith("nmengine.")]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _, _, _ in _imports(m):
            if target in MODULES and target != m and (m, target) not in CONVENIENCES:
                graph[m].add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a list of modules, first == last), or None.

    An import of a package's own ``__init__`` from inside the package (``from . import __version__``)
    is an edge like any other: it runs the ``__init__`` first.
    """
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {m: WHITE for m in graph}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        colour[m] = GREY
        stack.append(m)
        for t in sorted(graph[m]):
            if colour[t] == GREY:
                return stack[stack.index(t) :] + [t]
            if colour[t] == WHITE:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        colour[m] = BLACK
        return None

    for m in sorted(graph):
        if colour[m] == WHITE:
            found = visit(m)
            if found:
                return found
    return None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_walker_sees_the_package():
    # A walker that found nothing would pass every rule below.
    assert {"nmengine.program", "nmengine.runtime", "nmengine.cost", "nmengine.cost.model", "nmengine.kernels"} <= set(
        MODULES
    )
    g = _graph()
    assert "nmengine.program" in g["nmengine.runtime"] and "nmengine.shapes" in g["nmengine.cost.model"]


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    # Package __init__ modules re-export their submodules; an edge *into* a package __init__ from one of
    # its own submodules is a real cycle, so __init__ modules take part like any other module.
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_nothing_imports_the_command_line():
    # nmengine.cli is the outermost room: it imports the library; only the ``python -m nmengine`` entry
    # point imports it back.
    assert "nmengine.cli" in MODULES and "nmengine.cli.train" in MODULES
    bad = [
        f"{m}:{line} imports {target}"
        for m in MODULES
        if m != "nmengine.__main__" and m != "nmengine.cli" and not m.startswith("nmengine.cli.")
        for target, _, _, line in _imports(m)
        if target == "nmengine.cli" or target.startswith("nmengine.cli.")
    ]
    assert not bad, "; ".join(bad)


def test_conveniences_stay_lazy():
    for importer, imported in sorted(CONVENIENCES):
        for target, _, top, line in _imports(importer):
            if target == imported or target.startswith(imported + "."):
                assert not top, f"{importer}:{line} imports {target} at module level; it must stay inside the method"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_crosses_a_module_line(name):
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    bad = []
    for target, attr, _, line in _imports(name):
        if target == name:
            continue
        if attr is not None and _is_private(attr):
            bad.append(f"line {line}: imports {attr} from {target}")
        if attr is None and any(_is_private(p) for p in target.split(".")):
            if name not in PRIVATE_MODULE_OWNERS.get(target, set()):
                bad.append(f"line {line}: imports the private module {target}")
    # `module._name` where `module` is an imported nmengine module
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = _resolve(name, node.level, node.module)
            for a in node.names:
                if f"{mod}.{a.name}" in MODULES:
                    aliases[a.asname or a.name] = f"{mod}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("nmengine") and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _is_private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and aliases[node.value.id] != name
        ):
            bad.append(f"line {node.lineno}: reads {node.value.id}.{node.attr}")
    assert not bad, f"{name}: " + "; ".join(bad)
