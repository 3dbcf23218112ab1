"""The import rules of the layout (README.md and ARCHITECTURE.md, Layout), checked on the source.

Every import counts, at any depth (inside functions too), relative ones made absolute:

* the core (xds/, and the wsdl/ data package) imports no actor, no harness and no composition;
* registry/ never imports repository/, nor repository/ registry/;
* conformance/ imports neither actor; of the composition only conformance/ci.py imports node/, to start
  our own all-in-one server for the CI run (the harness itself talks to any endpoint over the network);
* only node/ imports both actors;
* only xds/cheroot_adapter.py imports cheroot (node/ uses the adapter, never cheroot itself).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("xds", "registry", "repository", "conformance", "node", "wsdl")
ACTORS = {"registry", "repository"}


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def imported_modules(path: Path) -> set[str]:
    """Every module path imports, absolute; `from a import b` counts as a and as a.b."""
    name, is_package = _module_name(path)
    package = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names if a.name != "*")
    return found


def _files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _tops(path: Path) -> set[str]:
    return {m.split(".")[0] for m in imported_modules(path) if m}


FILES = _files()


def _id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_relative_imports_are_resolved():
    assert "xds.mtom.errors" in imported_modules(ROOT / "xds" / "mtom" / "reader.py")
    assert "xds.constants" in imported_modules(ROOT / "xds" / "mtom" / "xop.py")
    assert "registry.store" in imported_modules(ROOT / "registry" / "service.py")


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_import_rules(path):
    where = _id(path)
    package = where.split("/")[0]
    tops = _tops(path)
    if package in ("xds", "wsdl"):
        bad = tops & (ACTORS | {"conformance", "node"})
        assert not bad, f"{where}: the core imports {sorted(bad)}"
    if package == "registry":
        assert "repository" not in tops, f"{where}: the registry imports the repository actor"
    if package == "repository":
        assert "registry" not in tops, f"{where}: the repository imports the registry actor"
    if package == "conformance":
        bad = tops & ACTORS
        assert not bad, f"{where}: the conformance harness imports {sorted(bad)}"
        if where != "conformance/ci.py":
            assert "node" not in tops, f"{where}: only conformance/ci.py starts our own server (node)"
    if ACTORS <= tops:
        assert package == "node", f"{where} imports both actors: only the composition (node/) does"
    if where != "xds/cheroot_adapter.py":
        assert "cheroot" not in tops, f"{where} imports cheroot: only xds/cheroot_adapter.py does"


def test_the_composition_uses_the_adapter():
    assert "xds.cheroot_adapter" in imported_modules(ROOT / "node" / "server.py")
