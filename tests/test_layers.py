"""The package's folders are layers; a module imports only from its own layer and the layers below it."""

import ast
from pathlib import Path

import incasem_like

PACKAGE = Path(incasem_like.__file__).parent
#: bottom to top
LAYERS = ("core", "ops", "store", "blockwise", "nn", "stages", "evaluation", "training", "review", "workflow", "cli")


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("incasem_like.")}


def test_every_module_lives_in_a_layer():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert loose == []
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(LAYERS)


def test_imports_point_down():
    upward = set()
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        own = layer(module)
        for imported in imports(path):
            other = layer(imported)
            if own and other and LAYERS.index(other) > LAYERS.index(own):
                upward.add((module, imported))
    assert upward == set()
