"""The package's layers: a module imports only from its own layer or below, and no import loop
exists, lazy (function-level) imports included. Read from the source with ``ast``; nothing is
imported."""

import ast
import os

import pyro_vae

ROOT = os.path.dirname(pyro_vae.__file__)
LAYERS = [
    "core",
    "data",
    "estimators",
    "guides",
    "models",
    "evaluation",
    "training",
    "app",
]  # bottom first


def modules():
    out = {}
    for d, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), os.path.dirname(ROOT))[:-3].replace(
                    os.sep, "."
                )
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(
                    d, f
                )
    return out


def imports(path, known):
    """Every pyro_vae module that ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pyro_vae")}
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyro_vae")
        ):
            assert node.level == 0, (
                f"{path}: relative import; pyro_vae imports itself by absolute names"
            )
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m in known}


def graph():
    known = modules()
    return {m: imports(p, known) - {m} for m, p in known.items()}


def layer(module):
    parts = module.split(".")
    name = (
        "data"
        if len(parts) > 1 and parts[1] == "datasets"
        else (parts[1] if len(parts) > 1 else None)
    )
    return LAYERS.index(name) if name in LAYERS else None


def test_every_module_imports_only_its_own_layer_or_below():
    bad = [
        (a, b)
        for a, deps in graph().items()
        for b in deps
        if layer(a) is not None and layer(b) is not None and layer(b) > layer(a)
    ]
    assert not bad, f"imports from a higher layer: {bad}"


def test_no_import_loop_lazy_imports_included():
    g = graph()
    g = {
        m: deps - {"pyro_vae"}
        for m, deps in g.items()
        if m not in ("pyro_vae", "pyro_vae.__main__")
    }
    state, loops = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(g.get(m, ())):
            if state.get(d) == "open":
                loops.append(path[path.index(d) :] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not loops, f"import loops: {loops}"


def test_lowest_layer_imports_nothing_above_it():
    assert all(layer(d) == 0 for m, deps in graph().items() if layer(m) == 0 for d in deps)
