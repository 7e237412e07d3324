"""The architecture holds: each layer imports only the layers below it, and no module imports itself back.

Layers, bottom up (README, "Architecture"): the shared leaves (errors, units, credentials); storage backends
and database drivers; the restic engine; maintenance; the backup/restore flows; the Stash layer; the CLI.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent

# package prefix -> rank; a module may import from its own rank (inside its package) or lower ranks
LAYERS = [
    ("stash_runner.errors", 0),
    ("stash_runner.units", 0),
    ("stash_runner.credentials", 0),
    ("backends", 1),
    ("drivers", 1),
    ("stash_runner.restic", 2),
    ("stash_runner.maintenance", 3),
    ("stash_runner.flows", 4),
    ("stash_runner.hooks", 4),
    ("stash_runner.stash", 5),
    ("stash_runner.cli", 6),
    ("stash_runner.__main__", 7),
    ("stash_runner", 0),  # the package's own __init__ (the version)
]


def _rank(module: str) -> tuple[str, int]:
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    raise AssertionError(f"{module}: in no layer")


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for top in ("stash_runner", "backends", "drivers"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: pathlib.Path, known: dict) -> set[str]:
    """What a module imports from the project (module-level and inside functions alike)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" names a module; "from mod import name" names the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t.split(".")[0] in ("stash_runner", "backends", "drivers"))
    return out


def test_layers_import_only_downwards():
    known = _modules()
    wrong = []
    for name, path in sorted(known.items()):
        mine, my_rank = _rank(name)
        for target in sorted(_imports(name, path, known)):
            theirs, rank = _rank(target)
            if rank > my_rank or (rank == my_rank and theirs != mine and my_rank != 0):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycles_between_modules():
    known = _modules()
    graph = {name: {t for t in _imports(name, path, known) if t in known and t != name}
             for name, path in known.items()}
    # a package's __init__ importing its own modules is not a cycle of concern
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
