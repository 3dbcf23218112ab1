"""The value sets (French JDV) that profile rules check coded metadata against.

Each set is a JSON file of the ``valuesets`` folder next to this module, shipped as package data:

- ``name``, ``oid``, ``official`` (false when the list was written from a description rather than an
  export of the official set) and ``source`` (where it comes from);
- ``concepts``: ``[codeSystem, code]`` pairs;
- ``systems``: ``[codeSystem, codePrefix]`` pairs whose codes are all accepted (an empty prefix: every
  code of that system);
- optionally ``extra``: more concepts, with their own ``source``, accepted although the official set
  does not list them.

Files are read once, on first use.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

PACKAGE = __name__.rpartition(".")[0]
FOLDER = "valuesets"


@dataclass(frozen=True)
class ValueSet:
    name: str
    oid: str
    official: bool
    concepts: frozenset[tuple[str, str]]
    systems: tuple[tuple[str, str], ...] = ()
    extra: frozenset[tuple[str, str]] = frozenset()

    def contains(self, code: str | None, scheme: str | None = None) -> bool:
        """Whether ``code`` of coding scheme ``scheme`` is in the set; with scheme None, whether any
        system of the set has that code (for values that carry no scheme, such as a CX.5)."""
        if not code:
            return False
        if scheme is None:
            return (any(c == code for _, c in self.concepts | self.extra)
                    or any(code.startswith(prefix) for _, prefix in self.systems))
        if (scheme, code) in self.concepts or (scheme, code) in self.extra:
            return True
        return any(scheme == system and code.startswith(prefix) for system, prefix in self.systems)

    def codes(self, scheme: str) -> list[str]:
        """The listed codes of one system, sorted (for messages and tests)."""
        return sorted(c for s, c in self.concepts | self.extra if s == scheme)

    def __str__(self) -> str:
        return self.name


def _pairs(items, what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise ValueError(f"{what}: {item!r} is not a [codeSystem, code] pair")
        out.append((item[0], item[1]))
    return out


def parse(data: dict, what: str = "value set") -> ValueSet:
    extra = data.get("extra") or {}
    return ValueSet(
        name=data["name"],
        oid=data.get("oid") or "",
        official=bool(data.get("official")),
        concepts=frozenset(_pairs(data.get("concepts", []), what)),
        systems=tuple(_pairs(data.get("systems", []), what)),
        extra=frozenset(_pairs(extra.get("concepts", []), what)),
    )


@functools.lru_cache(maxsize=None)
def get(name: str) -> ValueSet:
    """The value set ``name`` (e.g. ``JDV_J07``) from its file ``valuesets/JDV_J07.json``."""
    resource = resources.files(PACKAGE) / FOLDER / f"{name}.json"
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyError(f"no value set {name!r} in {PACKAGE}/{FOLDER}") from None
    vs = parse(json.loads(text), f"{FOLDER}/{name}.json")
    if vs.name != name:
        raise ValueError(f"{FOLDER}/{name}.json names itself {vs.name!r}")
    return vs


def names() -> list[str]:
    """Every value set shipped with the package."""
    folder = resources.files(PACKAGE) / FOLDER
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))
