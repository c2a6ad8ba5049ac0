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
    "optional": 1, "devices": 1,
    "encoders": 2, "index": 2,
    "data": 3, "fusion": 3,
    "checkpoint": 4,
    "eval": 5, "api": 5,  # what scores and what answers queries: neither needs training
    "serve": 6, "indexing": 6,  # indexing: building an index from a gallery with an engine (local, Ray)
    "training": 7,
    "experiment": 8,  # where training and evaluation meet: the workspace and the multi-seed sweep
    "demo": 9, "cli": 10,
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
