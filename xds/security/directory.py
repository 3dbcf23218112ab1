"""The health structures and professionals a VIHF may name (check C-6): a directory file standing for
the national directories (RPPS for professionals, FINESS / the structures' register), which this
server cannot reach.

    [[structure]]
    id = "499900063480001"          # Identifiant_Structure
    active = true
    professionals = ["899900063480"] # NameIDs (IdNat_PS) linked to it

Read once at start-up; a structure not listed, or inactive, and a professional not linked to the
structure are refused with the DMP's own wording.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

from .saml import SecurityFault

F = SecurityFault


@dataclass
class Structure:
    id: str
    active: bool = True
    professionals: frozenset[str] = field(default_factory=frozenset)


class Directory:
    def __init__(self, structures: list[Structure]):
        self.structures = {s.id: s for s in structures}

    @classmethod
    def load(cls, path: str) -> "Directory":
        with open(path, "rb") as f:
            data = tomllib.load(f)
        entries = data.get("structure", [])
        if not isinstance(entries, list):
            raise ValueError(f"{path}: [[structure]] tables expected")
        out = []
        for i, e in enumerate(entries, 1):
            ident = str(e.get("id") or "").strip()
            if not ident:
                raise ValueError(f"{path}: structure {i} has no id")
            people = e.get("professionals", [])
            if not isinstance(people, list):
                raise ValueError(f"{path}: structure {ident}: professionals must be a list")
            out.append(Structure(ident, bool(e.get("active", True)), frozenset(str(p).strip() for p in people)))
        return cls(out)

    def check(self, structure_id: str | None, name_id: str | None) -> None:
        s = self.structures.get(structure_id or "")
        if s is None or not s.active:
            raise F(F.FAILED_AUTHENTICATION, "Structure introuvable ou inactive: the VIHF's Identifiant_Structure is "
                    "not an active structure of the directory")
        if (name_id or "") not in s.professionals:
            raise F(F.FAILED_AUTHENTICATION, "PS et structure non liés: the VIHF's NameID is not a professional of "
                    "its structure in the directory")
