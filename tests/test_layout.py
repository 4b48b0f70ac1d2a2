"""The package's shape: no import cycle (top-level, or closed by an import inside a function), no module over
500 lines, and the grader process reaches the kernel's side only through kernel/wire.py."""
from __future__ import annotations

import ast
from pathlib import Path

import attnkit

PACKAGE = Path(attnkit.__file__).resolve().parent
SKIP = ()
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        if rel.parts[1] in SKIP:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict) -> tuple[set[str], set[str]]:
    """The kit's modules that ``path`` imports at its top level, and those it imports inside functions."""
    top, inner = set(), set()
    tree = ast.parse(path.read_text())

    def names(node) -> set[str]:
        found = set()
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # ``from pkg import module`` imports the module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        return {n for n in found if n in modules}

    def walk(node, depth):
        for child in ast.iter_child_nodes(node):
            inside = depth or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if inside else top).update(names(child))
            walk(child, inside)

    walk(tree, False)
    return top, inner


def _graph():
    modules = _modules()
    top, inner = {}, {}
    for name, path in modules.items():
        top[name], inner[name] = _imports(path, modules)
    for name in modules:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent in modules and parent != name:
                top[name].discard(parent)  # a package's own __init__ is not an edge back (it imports its children)
    return modules, top, inner


def _reach(graph: dict, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_module_imports_itself_back():
    """Does no module of the kit reach itself through top-level imports (an import cycle)?"""
    _, top, _ = _graph()
    cycles = sorted(name for name in top if name in _reach(top, name))
    assert cycles == [], f"modules in an import cycle: {cycles}"


def test_no_import_inside_a_function_hides_a_cycle():
    """Counting the imports inside functions too, does no module reach itself (a cycle kept from failing at
    import time only by deferring one side's import)?"""
    _, top, inner = _graph()
    union = {name: {t for t in top[name] | inner[name]} for name in top}
    hidden = sorted(name for name in union if name in _reach(union, name))
    assert hidden == [], f"modules in a cycle through imports inside functions: {hidden}"


def test_no_module_is_over_500_lines():
    """Is every module of the kit (fixture banks aside) at most 500 lines?"""
    modules = _modules()
    long = {name: n for name, path in modules.items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_the_grader_reaches_the_kernel_side_only_through_wire():
    """Does no module of attnkit/grader/ import a kernel-side module other than attnkit.kernel.wire?"""
    _, top, inner = _graph()
    bad = sorted(f"{name} -> {target}" for name in top if name.startswith("attnkit.grader")
                 for target in top[name] | inner[name]
                 if target.startswith("attnkit.kernel") and target != "attnkit.kernel.wire")
    assert bad == [], f"grader modules importing the kernel's side: {bad}"
