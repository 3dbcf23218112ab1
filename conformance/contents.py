"""ExpectedContents: what a query response's RegistryObjectList must hold."""
from __future__ import annotations

from typing import Callable

from lxml import etree

from xds import constants as C
from xds.constants import last_segment

from .plan import UseId


def _rim(local: str) -> str:
    return C.q(C.NS_RIM, local)


class Contents:
    """The objects of one response, sorted by what they are."""

    def __init__(self, body: etree._Element):
        rol = body.find(_rim("RegistryObjectList"))
        children = [c for c in rol if isinstance(c.tag, str)] if rol is not None else []
        self.docs = [c for c in children if c.tag == _rim("ExtrinsicObject")]
        self.assocs = [c for c in children if c.tag == _rim("Association")]
        self.refs = [c for c in children if c.tag == _rim("ObjectRef")]
        packages = [c for c in children if c.tag == _rim("RegistryPackage")]
        loose = [c for c in children if c.tag == _rim("Classification")]
        self.ss = [p for p in packages if self._is(p, loose, C.SS_CLASSIFICATION_NODE)]
        self.folders = [p for p in packages if self._is(p, loose, C.FOLDER_CLASSIFICATION_NODE)]
        # A package without its SubmissionSet/Folder classification cannot be told apart; say so.
        self.unclassified = [p for p in packages if p not in self.ss and p not in self.folders]
        self.errors = list(body.iter(C.q(C.NS_RS, "RegistryError")))

    @staticmethod
    def _is(pkg: etree._Element, loose: list[etree._Element], node: str) -> bool:
        pid = pkg.get("id")
        nested = any(c.get("classificationNode") == node for c in pkg.findall(_rim("Classification")))
        return nested or any(c.get("classificationNode") == node and c.get("classifiedObject") == pid
                             for c in loose)

    def has_member(self, sources: list[etree._Element], targets: list[etree._Element]) -> int:
        src = {s.get("id") for s in sources}
        tgt = {t.get("id") for t in targets}
        return sum(1 for a in self.assocs if last_segment(a.get("associationType"), "") == "HasMember"
                   and a.get("sourceObject") in src and a.get("targetObject") in tgt)

    def describe(self) -> str:
        return (f"{len(self.ss)} SubmissionSet(s), {len(self.docs)} DocumentEntry(ies), {len(self.folders)} "
                f"Folder(s), {len(self.assocs)} Association(s), {len(self.refs)} ObjectRef(s)"
                + (f", and {len(self.unclassified)} RegistryPackage(s) classified neither as SubmissionSet nor "
                   "as Folder" if self.unclassified else ""))


def _count(c: Contents, what: str, expected: int) -> list[str]:
    got = {"Documents": len(c.docs), "Folders": len(c.folders), "SubmissionSets": len(c.ss),
           "Associations": len(c.assocs), "ObjectRefs": len(c.refs)}[what]
    if got == expected:
        return []
    hint = ""
    if what in ("Folders", "SubmissionSets") and c.unclassified:
        hint = (f" ({len(c.unclassified)} RegistryPackage(s) lack the SubmissionSet/Folder classification "
                "that tells them apart)")
    return [f"{what}: expected {expected}, got {got}{hint}"]


def _status_all(objs, status: str, label: str) -> list[str]:
    bad = [o.get("id") for o in objs if last_segment(o.get("status"), "") != status]
    return [f"{label}: expected every one {status}, not so for {', '.join(map(str, bad))}"] if bad else []


def _status_one(objs, status: str, label: str) -> list[str]:
    return [] if any(last_segment(o.get("status"), "") == status for o in objs) else [f"{label}: none is {status}"]


def _shape(c: Contents, ss: int, docs: int, folders: int, assocs: int, label: str) -> list[str]:
    got = (len(c.ss), len(c.docs), len(c.folders), len(c.assocs))
    if got != (ss, docs, folders, assocs):
        return [f"{label}: expected {ss} SubmissionSet, {docs} DocumentEntry, {folders} Folder, "
                f"{assocs} Association; got {c.describe()}"]
    return []


def _ss_with_docs(c: Contents, n: int, label: str, approved: bool) -> list[str]:
    problems = _shape(c, 1, n, 0, n, label)
    if not problems and c.has_member(c.ss, c.docs) != n:
        problems.append(f"{label}: the Associations are not SubmissionSet HasMember DocumentEntry")
    if approved and not problems:
        problems += _status_all(c.ss, "Approved", f"{label} SubmissionSet status")
    return problems


def _has_type(c: Contents, kind: str) -> list[str]:
    if any(last_segment(a.get("associationType"), "") == kind for a in c.assocs):
        return []
    return [f"Has{kind}: no {kind} Association in the response"]


_SIMPLE: dict[str, Callable[[Contents], list[str]]] = {
    "None": lambda c: [] if not (c.ss or c.docs or c.folders or c.assocs) else
    [f"None: expected no objects, got {c.describe()}"],
    "NoSubmissionSet": lambda c: [] if not c.ss else [f"NoSubmissionSet: got {len(c.ss)}"],
    "NoDocument": lambda c: [] if not c.docs else [f"NoDocument: got {len(c.docs)}"],
    "SSwithOneDoc": lambda c: _ss_with_docs(c, 1, "SSwithOneDoc", True),
    "SSwithOneDocOnly": lambda c: _ss_with_docs(c, 1, "SSwithOneDocOnly", False),
    "SSwithTwoDoc": lambda c: _ss_with_docs(c, 2, "SSwithTwoDoc", True),
    "SSwithTwoDocOnly": lambda c: _ss_with_docs(c, 2, "SSwithTwoDocOnly", False),
    "SSwithOneFol": lambda c: _shape(c, 1, 0, 1, 1, "SSwithOneFol") or (
        [] if c.has_member(c.ss, c.folders) == 1 else ["SSwithOneFol: no SubmissionSet HasMember Folder"]),
    "SSwithOneDocOneFol": lambda c: _shape(c, 1, 1, 1, 4, "SSwithOneDocOneFol"),
    "SSwithTwoDocOneFol": lambda c: _shape(c, 1, 2, 1, 7, "SSwithTwoDocOneFol"),
    "SSwithTwoDocOneFolOneDocInFol": lambda c: _shape(c, 1, 2, 1, 5, "SSwithTwoDocOneFolOneDocInFol"),
    "SSApproved": lambda c: (_status_all(c.ss, "Approved", "SSApproved") if c.ss
                             else ["SSApproved: no SubmissionSet in the response"]),
    "DocApp": lambda c: _status_all(c.docs, "Approved", "DocApp"),
    "DocDep": lambda c: _status_all(c.docs, "Deprecated", "DocDep"),
    "OneDocApp": lambda c: _status_one(c.docs, "Approved", "OneDocApp"),
    "OneDocDep": lambda c: _status_one(c.docs, "Deprecated", "OneDocDep"),
    "FolApp": lambda c: _status_all(c.folders, "Approved", "FolApp"),
    "FolDep": lambda c: _status_all(c.folders, "Deprecated", "FolDep"),
    "HasRPLC": lambda c: _has_type(c, "RPLC"),
    "HasXFRM_RPLC": lambda c: _has_type(c, "XFRM_RPLC"),
    "HasAPND": lambda c: _has_type(c, "APND"),
    "HasSnapshotPattern": lambda c: _has_type(c, "IsSnapshotOf"),
    "RegistryResponseIsValid": lambda c: [] if not [e for e in c.errors
                                                    if not (e.get("severity") or "").endswith("Warning")]
    else ["RegistryResponseIsValid: the response carries errors"],
}
_COUNTED = ("Documents", "Folders", "SubmissionSets", "Associations", "ObjectRefs")


def check(expected: etree._Element, body: etree._Element,
          resolve: Callable[[UseId], str] | None = None) -> list[str]:
    """Problems with `body` against an ExpectedContents element; resolve turns a UseId into an id."""
    c = Contents(body)
    problems: list[str] = []
    for item in expected:
        if not isinstance(item.tag, str):
            continue
        name = item.tag
        if name in _COUNTED:
            try:
                count = int(item.get("count", ""))
            except ValueError:
                problems.append(f"{name}: count {item.get('count')!r} is not a number")
                continue
            problems += _count(c, name, count)
            if name == "ObjectRefs" and (c.ss or c.docs or c.folders or c.assocs):
                problems.append(f"ObjectRefs: expected only ObjectRefs, got {c.describe()}")
        elif name in _SIMPLE:
            problems += _SIMPLE[name](c)
        elif name == "DocumentEntries":
            problems += _document_entries(c, item, resolve)
        else:
            problems.append(f"ExpectedContents {name} is not understood by this harness")
    return problems


def _entry_specs(block: etree._Element, resolve) -> list[tuple[str, str | None]]:
    specs = []
    for de in block.iterfind("DocumentEntry"):
        ident = None
        use = de.find("UseId")
        if use is not None and resolve is not None:
            ident = resolve(UseId(use.get("testdir", ""), use.get("step", ""), use.get("section", ""),
                                  use.get("id", ""), use.get("symbol", ""), use.get("value")))
        specs.append((ident or "", (de.findtext("DocumentEntryType") or "").strip() or None))
    return specs


def _document_entries(c: Contents, block: etree._Element, resolve) -> list[str]:
    problems = []
    by_id = {d.get("id"): d for d in c.docs}
    wanted_type = (block.findtext("DocumentEntryType") or "").strip()
    if wanted_type:
        bad = [d.get("id") for d in c.docs if d.get("objectType") != wanted_type]
        if bad:
            problems.append(f"DocumentEntries: expected objectType {wanted_type} on every entry, not on {bad}")
    for mode in ("MustOnlyInclude", "Include", "Exclude"):
        for group in block.iterfind(mode):
            specs = _entry_specs(group, resolve)
            for ident, object_type in specs:
                present = by_id.get(ident)
                if mode == "Exclude":
                    if present is not None:
                        problems.append(f"DocumentEntries Exclude: {ident} is in the response")
                    continue
                if present is None:
                    problems.append(f"DocumentEntries {mode}: {ident} is missing from the response")
                elif object_type and present.get("objectType") != object_type:
                    problems.append(f"DocumentEntries {mode}: {ident} has objectType "
                                    f"{present.get('objectType')}, expected {object_type}")
            if mode == "MustOnlyInclude":
                extra = set(by_id) - {i for i, _ in specs}
                if extra:
                    problems.append(f"DocumentEntries MustOnlyInclude: unexpected entries {sorted(extra)}")
    return problems
