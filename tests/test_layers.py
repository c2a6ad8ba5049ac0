"""The package's layer order (docs/architecture.md): a module imports only from layers below its own, or
from its own package. Every import counts, at the top of a file or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import cirlab

SRC = Path(cirlab.__file__).parent

# lower numbers first; two parts on one layer must not import each other
LAYERS = {
    "errors": 0,
    "cirlab": 1, "registry": 1, "settings": 1, "files": 1, "images": 1, "config": 1,  # "cirlab": the version
    "optional": 1, "devices": 1, "session": 1,  # session: how a multi-turn session's turns become a query
    "hardware": 1,  # what the machine computes with (CPU features, threads, GPU)
    "encoders": 2, "index": 2,
    "data": 3, "fusion": 3,
    "checkpoint": 4,
    "eval": 5, "api": 5,  # what scores and what answers queries: neither needs training
    "indexing": 6,  # building and changing a saved index: the one write path (local and Ray engines)
    "rerank": 6,  # a second model over the first stage's candidates, in an evaluation or beside a pipeline
    "serve": 7,
    "training": 8,
    "experiment": 9,  # where training and evaluation meet: the workspace and the multi-seed sweep
    "demo": 10, "cli": 11,
}


def part_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "cirlab"


def imported_parts(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "cirlab" else [f"cirlab.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "cirlab":
                out.add(parts[1] if len(parts) > 1 and parts[1] in LAYERS else "cirlab")
    return out


def test_every_import_points_down_the_layers():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 40
    wrong = []
    for path in files:
        part = part_of(path)
        if part == "cirlab":  # the package root re-exports the public API lazily (PEP 562), above every layer
            continue
        assert part in LAYERS, f"{path} belongs to no layer: add it to LAYERS and docs/architecture.md"
        for other in imported_parts(ast.parse(path.read_text())):
            if other != part and LAYERS[other] >= LAYERS[part]:
                wrong.append(f"{path.relative_to(SRC)}: {part} (layer {LAYERS[part]}) imports {other} "
                             f"(layer {LAYERS[other]})")
    assert not wrong, "\n".join(wrong)


def module_of(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def module_imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The cirlab modules a file imports, anywhere in it: ``from cirlab.a import b`` counts ``cirlab.a.b`` where
    that is a module, else ``cirlab.a``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of an import graph, each once (a depth-first search from every module)."""
    found: set[tuple[str, ...]] = set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt == path[0]:
                found.add(tuple(path))
            elif nxt not in path and nxt > path[0]:  # each cycle from its smallest module only
                walk(nxt, path + [nxt])

    for start in graph:
        walk(start, [start])
    return [list(c) for c in sorted(found)]


def test_no_module_imports_itself_through_another():
    """Inside one package too (the layer rule above sees only packages): no import circle between modules,
    counting imports inside functions, where a circle hides from Python's import-time failure."""
    paths = {module_of(p): p for p in SRC.rglob("*.py")}
    graph = {m: module_imports(ast.parse(p.read_text()), set(paths)) - {m} for m, p in paths.items()}
    for m in graph:  # a package's __init__ re-exporting its modules is not a circle with them
        graph[m] = {o for o in graph[m] if not m.startswith(o + ".")}
    cycles = import_cycles(graph)
    assert not cycles, "\n".join(" -> ".join(c + c[:1]) for c in cycles)


def test_the_cycle_rule_sees_an_import_inside_a_function():
    modules = {"cirlab.fusion.base", "cirlab.fusion.heads", "cirlab.fusion"}
    base = module_imports(ast.parse("def f():\n    from cirlab.fusion.heads import build_heads\n"), modules)
    heads = module_imports(ast.parse("from cirlab.fusion.base import thumbnail_rgb\n"), modules)
    assert import_cycles({"cirlab.fusion.base": base, "cirlab.fusion.heads": heads}) == [
        ["cirlab.fusion.base", "cirlab.fusion.heads"]]


def test_what_answers_a_query_never_imports_training():
    """api, serve, fusion, index and encoders answer queries; open_clip's rule: the library never needs
    the trainer. (Implied by the order above; kept as its own statement of intent.)"""
    for part in ("api", "serve", "fusion", "index", "encoders", "checkpoint", "data", "eval"):
        assert LAYERS[part] < LAYERS["training"]


def test_the_rule_catches_an_upward_import(tmp_path):
    tree = ast.parse("def f():\n    from cirlab.training.align import fit_text_head\nfrom cirlab import settings\n")
    assert imported_parts(tree) == {"training", "settings"}


def test_the_public_api_resolves():
    import importlib.metadata

    for name in cirlab.__all__:
        assert getattr(cirlab, name) is not None
    assert importlib.metadata.version("cirlab") == cirlab.__version__  # one version, read by the build
