"""The registry actor's own layout rules (ARCHITECTURE.md, Layout), checked on its source: the tables
are reached only by the storage layer (registry/store.py says which modules), and no registry module
imports another's private names. The rules between packages are in test_layout.py."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REGISTRY = Path(__file__).resolve().parent.parent / "registry"
STORAGE = {"schema.py", "store.py", "partitions.py", "query/filters.py", "query/queries.py", "query/scope.py", "access.py"}  # and migrations/


def _modules() -> list[tuple[str, ast.Module]]:
    return [(p.relative_to(REGISTRY).as_posix(), ast.parse(p.read_text(), str(p)))
            for p in sorted(REGISTRY.rglob("*.py")) if "migrations" not in p.relative_to(REGISTRY).parts]


def _imports(tree: ast.Module):
    """(module as written, with the dots of a relative import; the names taken from it), at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], None
        elif isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or ""), [a.name for a in node.names], node


MODULES = _modules()


@pytest.mark.parametrize("name,tree", MODULES, ids=[name for name, _ in MODULES])
def test_no_private_names_across_registry_modules(name, tree):
    for module, names, _ in _imports(tree):
        if module.startswith(".") or module.split(".")[0] == "registry":
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{name} imports private names {private} from {module}"


@pytest.mark.parametrize("name,tree", [m for m in MODULES if m[0] not in STORAGE],
                         ids=[name for name, _ in MODULES if name not in STORAGE])
def test_only_the_storage_layer_reaches_the_tables(name, tree):
    schema_aliases = set()
    for module, names, node in _imports(tree):
        assert module.split(".")[0] != "sqlalchemy", f"{name} builds SQL ({module}) outside the storage layer"
        if node is None:
            continue
        if module.rstrip(".") in ("", "registry") and "schema" in names:  # from . import schema as S
            schema_aliases |= {a.asname or a.name for a in node.names if a.name == "schema"}
        elif module.endswith("schema"):  # from .schema import ...
            tables = [n for n in names if not n.startswith("KIND_")]
            assert not tables, f"{name} takes {tables} from registry.schema outside the storage layer"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in schema_aliases:
            assert node.attr.startswith("KIND_"), f"{name} uses schema.{node.attr} outside the storage layer"
