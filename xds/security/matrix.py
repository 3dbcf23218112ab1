"""The habilitation matrix file: which document types (typeCode) each profession may consult.

TOML, one table per profession code (the VIHF's first role, J65), e.g.

    official = false            # say whether this is the ministerial matrix (arrêté of 26 Oct 2023)
    [profession."10"]           # médecin
    types = ["*"]               # every type
    [profession."60"]           # infirmier
    types = ["11488-4^^2.16.840.1.113883.6.1", "34133-9^^2.16.840.1.113883.6.1"]

A typeCode is written as the registry stores it, code^^codingScheme. A profession that is not
listed may not consult (it may still feed and find references).
"""
from __future__ import annotations

import tomllib

from .policy import Matrix


def load_matrix(path: str) -> Matrix:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ValueError(f"habilitation_matrix {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"habilitation_matrix {path}: not TOML ({exc})") from None
    return parse_matrix(data, path)


def parse_matrix(data: dict, where: str = "habilitation matrix") -> Matrix:
    unknown = set(data) - {"official", "profession"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(sorted(unknown))} (expected official, [profession.CODE])")
    official = data.get("official", False)
    if not isinstance(official, bool):
        raise ValueError(f"{where}: official must be true or false")
    rows: dict[str, frozenset[str] | None] = {}
    for code, row in (data.get("profession") or {}).items():
        if not isinstance(row, dict) or set(row) - {"types", "name"} or "types" not in row:
            raise ValueError(f"{where}: [profession.{code!r}] needs types = [...] (and optionally name)")
        types = row["types"]
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise ValueError(f"{where}: profession {code}: types must be a list of strings")
        if "*" in types:
            if len(types) > 1:
                raise ValueError(f"{where}: profession {code}: \"*\" (every type) stands alone")
            rows[str(code)] = None
            continue
        for t in types:
            code_part, sep, scheme = t.partition("^^")
            if not sep or not code_part or not scheme or "^" in scheme:
                raise ValueError(f"{where}: profession {code}: {t!r} is not code^^codingScheme")
        rows[str(code)] = frozenset(types)
    if not rows:
        raise ValueError(f"{where}: no profession is listed, so nobody could consult")
    return Matrix(rows, official)
