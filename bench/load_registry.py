"""Fill a PostgreSQL registry with millions of DocumentEntries of realistic shape, fast: the rows the
registry itself writes for each submission (registry/store.py insert_submission), generated from
templates and COPYed by several processes in parallel, with the indexes and constraints built after.

    python bench/load_registry.py --entries 1000000 --pgdata /work/bench-data/pg   # a kept cluster
    python bench/load_registry.py --entries 2000 --verify                          # and check it
    python bench/load_registry.py --db postgresql+psycopg2://xds@host/db --entries 10000000 --jobs 2

Shape, for N entries: N/100 patients; most have 50-150 entries, a fifth 1-50, a tenth 150-600, and one
patient in 5,000 has 10,000. Entries arrive in SubmissionSets of 1-10 (one submitter each, the times
increasing per patient over 2010-2025), with varied class/type/format/practice/facility codes,
confidentiality (HL7, and on a few entries a DMP code), 0-3 eventCodes, one or two authors, a
referenceIdList on a tenth, 2 % On-Demand. 4 % of entries replace an earlier one (RPLC; the replaced
entry is Deprecated) and 1 % append to one (APND). A third of the patients have 1-3 Folders of 5-20 of
their entries (Folder->DE HasMember, with the SubmissionSet's HasMember to that association, as the
registry records them). Every patient is known (patient) and has an access state (acc_patient,
acc_person) as bench/query.py's policy measurement expects.

The stored XML of each object is what the registry stores for it: one submission per shape is built
with xds.builder, read with xds.ebrim.parse_submission and written with registry.store.stored_object
(stored_association: NULL for all of them), once; the ids and values are then filled in by string
formatting.

Prints entries/s, the phases' times and, per table, its heap, TOAST and index sizes and the bytes
per DocumentEntry. --verify compares, for a sample of patients, the registry's own stored queries
(in process) with raw SQL over the loaded rows.
"""
from __future__ import annotations

import argparse
import calendar
import io
import multiprocessing as mp
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lxml import etree  # noqa: E402

from registry import schema as S  # noqa: E402
from xds import builder  # noqa: E402
from xds import constants as C  # noqa: E402
from xds.security import policy as P  # noqa: E402

RIM = C.NS_RIM
LOINC = "2.16.840.1.113883.6.1"
CLASS_CODES = [f"CL{i:02d}^^{LOINC}" for i in range(10)]
TYPE_CODES = [f"TY{i:02d}^^{LOINC}" for i in range(20)]
FORMAT_CODES = [f"urn:fmt:{i}^^1.3.6.1.4.1.19376.1.2.3" for i in range(5)]
PRACTICE_CODES = [f"PS{i}^^1.2.250.1.213.1.1.4.9" for i in range(8)]
HCFT_CODES = [f"HF{i}^^1.2.250.1.213.1.1.4.9" for i in range(5)]
CONF_CODES = ["N^^2.16.840.1.113883.5.25"] * 16 + ["R^^2.16.840.1.113883.5.25"] * 3 + ["V^^2.16.840.1.113883.5.25"]
EVENT_CODES = [f"EV{i:02d}^^1.2.250.1.213.2.2" for i in range(30)]
AUTHORS = [f"{i}^Name{i}^Given{i % 97}^^^^^^&1.2.250.1.71.4.2.1&ISO" for i in range(2000)]
INSTITUTIONS = [f"Hopital {i}^^^^^^^^^1.2.250.1.71.4.2.2.{i}" for i in range(300)]
CONTENT_TYPES = [f"{i:02d}^^1.2.250.1.213.1.1.4.12" for i in range(1, 9)]
FOLDER_CODES = ["Referrals^^1.3.6.1.4.1.21367.100.1", "Episode^^1.3.6.1.4.1.21367.100.1"]
REPOSITORY = "1.2.250.1.999.3.1"
SOURCE_ID = "1.2.250.1.999.7"

# The access policy's data (bench/query.py measures FindDocuments as PS1 of ORG1 with it on).
ORG1, PS1 = "ORG1", "PS1"
OTHER_ORGS = [f"ORG{i}" for i in range(2, 51)]
ORG1_PEOPLE = [f"PS{i}" for i in range(1, 6)]
DMP_CODE_RATES = [(P.MASQUE_PS, 0.04), (P.INVISIBLE_PATIENT, 0.01), (P.INVISIBLE_RL, 0.005)]
PROFESSION = "10"
MATRIX = P.Matrix({PROFESSION: frozenset(TYPE_CODES[:15])})
POLICY_RULES = P.Rules(dmp=True, matrix=MATRIX, check_resource_id=True)

HUGE = 10_000          # entries of the few very large records
HUGE_EVERY = 5_000     # one patient in this many has one
RPLC_RATE, APND_RATE = 0.04, 0.01


def patient_id(n: int) -> str:
    return f"B{n:07d}^^^&1.2.250.1.213.1.4.10&ISO"


def xml_text(v: str) -> str:
    """A value as it appears in the stored XML (attribute or text): the templates are filled by formatting."""
    return v.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


def display(code: str) -> str:
    return "Libelle " + code.split("^", 1)[0]


# --- templates ----------------------------------------------------------------------------------------
# A field is @NAME@ in what the builder gets, {name} in the format string. Object ids are
# urn:uuid:{n}-0000-4000-8000-{salt} with n the object's registration number (seq, as 8 hex digits),
# and the ids of its Classifications and ExternalIdentifiers replace 0000 by their position.

_FIELD = re.compile(r"@([A-Z0-9]+)@")


def _code(field: str) -> tuple[str, str, str]:
    return (f"@{field}@", f"@{field}S@", f"@{field}N@")


def _to_format(xml: str) -> str:
    for bad in ("\t", "\n", "\\", "\r"):
        # COPY's text format would need them escaped; the templates stay free of them so that rows
        # are joined as they are.
        assert bad not in xml, f"template holds {bad!r}"
    xml = xml.replace("{", "{{").replace("}", "}}")
    return _FIELD.sub(lambda m: "{" + m.group(1).lower() + "}", xml)


def _number_subs(el: etree._Element, obj_field: str = "N") -> None:
    for i, sub in enumerate(el.iter(f"{{{RIM}}}Classification", f"{{{RIM}}}ExternalIdentifier"), start=1):
        sub.set("id", f"urn:uuid:@{obj_field}@-{i:04x}-4000-8000-@SALT@")
        if sub.get("classifiedObject"):
            sub.set("classifiedObject", el.get("id"))
        if sub.get("registryObject"):
            sub.set("registryObject", el.get("id"))


def _stored(elements: list[etree._Element]) -> dict[str, str]:
    """The registry's stored XML of each object of a submission, by its id: parsed and written by the
    registry's own code (the normalisation of nest_top_level, stored_xml's attributes)."""
    from registry.store import stored_association, stored_object
    from xds.ebrim import parse_submission
    from xds.model import Association

    sub = parse_submission(builder.submit_objects_request(elements))
    out = {}
    for o in sub.objects:
        if isinstance(o, Association):
            out[o.id] = stored_association(o)
            continue
        # Answer-ready, as RegistryStore stores it (the ready column, written "t" by the rows below).
        out[o.id], ready = stored_object(o, 1)
        if not ready:
            raise SystemExit(f"the {type(o).__name__} template is not answer-ready: registry/splice.py steps aside")
    return out


OID = "urn:uuid:@N@-0000-4000-8000-@SALT@"


def de_template(n_ev: int, n_au: int, ref: bool, dmp: bool) -> str:
    conf = [_code("CONF")] + ([_code("DMP")] if dmp else [])
    codes = {"class": _code("CLASS"), "type": _code("TYPE"), "format": _code("FMT"), "hcft": _code("HF"),
             "practice": _code("PS"), "confidentiality": conf,
             "event": [_code(f"EV{i}") for i in range(n_ev)]}
    el = builder.document_entry("@PID@", id=OID, unique_id="1.2.250.1.999.1.@NUM@", codes=codes,
                                creation_time="@CT@", service_start="@SST@", service_stop="@SSP@",
                                author_person="@AU0@", author_institution="@IN0@",
                                reference_ids=["@REF@^^^&1.2.250.1.999.9&ISO^urn:ihe:iti:xds:2013:order"] if ref else (),
                                hash="@HASH@", size="@SIZE@", repository_unique_id=REPOSITORY,
                                title="@TITLE@", mime_type="@MIME@", object_type="@OT@")
    el.set("lid", OID)
    el.set("status", C.STATUS_APPROVED)
    if n_au > 1:
        extra = etree.Element(f"{{{RIM}}}X", id=OID)
        builder.author(extra, C.DE_AUTHOR, "@AU1@", ["@IN1@"], roles=("Medecin",),
                       specialties=("G15_10/SM26^Medecine generale^1.2.250.1.213.1.1.4.5",))
        first = el.find(f"{{{RIM}}}Classification")
        first.addnext(extra[0])
    _number_subs(el)
    ss = builder.submission_set("@PID@", id="ss")
    return _to_format(_stored([ss, builder.submission_set_marker("ss"), el])[OID])


def ss_template() -> str:
    el = builder.submission_set("@PID@", id=OID, unique_id="1.2.250.1.999.2.@NUM@", source_id=SOURCE_ID,
                                submission_time="@ST@", content_type=_code("CT"), author_person="@AU0@",
                                author_institutions=["@IN0@"], title="Envoi")
    el.set("lid", OID)
    el.set("status", C.STATUS_APPROVED)
    marker = builder.submission_set_marker(OID)
    el.append(marker)  # nested already, so that it is numbered with the others
    _number_subs(el)
    return _to_format(_stored([el])[OID])


def fd_template() -> str:
    el = builder.folder("@PID@", id=OID, unique_id="1.2.250.1.999.4.@NUM@", codes=[_code("FC")], title="@TITLE@")
    el.set("lid", OID)
    el.set("status", C.STATUS_APPROVED)
    el.append(builder.folder_marker(OID))
    _number_subs(el)
    return _to_format(_stored([el])[OID])


def assoc_template(type_: str, ss_status: str | None) -> str | None:
    """None when the registry stores such an association as its columns alone (registry/bare_association.py)."""
    el = builder.association("@SRC@", "@TGT@", type_, id=OID, ss_status=ss_status)
    el.set("status", C.STATUS_APPROVED)
    xml = _stored([el])[OID]
    return None if xml is None else _to_format(xml)


class Templates:
    def __init__(self, salt: str):
        self.salt = salt
        self._de: dict[tuple, str] = {}
        self.ss = ss_template()
        self.fd = fd_template()
        self.hm = assoc_template(C.ASSOC_HAS_MEMBER, "Original")
        self.hm_fd = assoc_template(C.ASSOC_HAS_MEMBER, None)
        self.rplc = assoc_template(C.ASSOC_RPLC, None)
        self.apnd = assoc_template(C.ASSOC_APND, None)

    def de(self, shape: tuple) -> str:
        t = self._de.get(shape)
        if t is None:
            t = self._de[shape] = de_template(*shape)
        return t


# --- the plan: how many entries each patient has, and where its registration numbers start --------------

def patient_counts(entries: int, seed: int) -> list[int]:
    patients = max(1, entries // 100)
    rnd = random.Random(seed)
    counts = []
    for _ in range(patients):
        r = rnd.random()
        counts.append(rnd.randint(50, 150) if r < 0.7 else rnd.randint(1, 50) if r < 0.9 else rnd.randint(150, 600))
    huge = [i for i in range(0, patients, HUGE_EVERY)][1:] if patients > HUGE_EVERY else []
    huge_total = HUGE * len(huge)
    if huge_total >= entries:
        huge, huge_total = [], 0
    rest = [i for i in range(patients) if i not in set(huge)]
    scale = (entries - huge_total) / sum(counts[i] for i in rest)
    out = [0] * patients
    for i in rest:
        out[i] = max(1, int(counts[i] * scale))
    for i in huge:
        out[i] = HUGE
    # Rounding: the difference goes to the first ordinary patients, one each.
    diff = entries - sum(out)
    k = 0
    while diff != 0:
        i = rest[k % len(rest)]
        step = 1 if diff > 0 else -1
        if out[i] + step >= 1:
            out[i] += step
            diff -= step
        k += 1
    return out


def seq_bounds(counts: list[int]) -> list[int]:
    """The first registration number of each patient: room for every object and association it may
    get (an entry, its HasMember and a relationship; its SubmissionSet; folders)."""
    base, out = 1, []
    for c in counts:
        out.append(base)
        base += 4 * c + 64
    return out


# --- generation ---------------------------------------------------------------------------------------------

OBJ_COLS = ["id", "lid", "version", "kind", "status", "patient_id", "unique_id", "seq", "xml",
            "origin_org", "origin_person", "origin_time", "reveal_at", "ready"]
DE_COLS = ["id", "entry_type", "class_code", "type_code", "format_code", "practice_setting_code", "hcft_code",
           "creation_time", "service_start_time", "service_stop_time", "hash", "size", "repository_unique_id",
           "mime_type", "availability"]
SS_COLS = ["id", "submission_time", "source_id", "content_type_code"]
FD_COLS = ["id", "last_update_time"]
CODE_COLS = ["object_id", "scheme", "code"]
AUTHOR_COLS = ["object_id", "person"]
REF_COLS = ["object_id", "value"]
ASSOC_COLS = ["id", "type", "source", "target", "status", "ss_status", "seq", "xml"]
PATIENT_COLS = ["patient_id", "active", "merged_into"]
ACC_PATIENT_COLS = ["patient_id", "closed", "minor", "treating_doctor", "object_break_glass", "object_centre_15",
                    "updated"]
ACC_PERSON_COLS = ["patient_id", "person", "relation", "since", "until", "updated"]
TABLES = {"reg_object": OBJ_COLS, "doc_entry": DE_COLS, "submission_set": SS_COLS, "folder": FD_COLS,
          "object_code": CODE_COLS, "object_author": AUTHOR_COLS, "reference_id": REF_COLS,
          "association": ASSOC_COLS, "patient": PATIENT_COLS, "acc_patient": ACC_PATIENT_COLS,
          "acc_person": ACC_PERSON_COLS}
# The side tables, whose rows take their object's patient in the partitioned layout.
KEYED_BY_OBJECT = ("doc_entry", "submission_set", "folder", "object_code", "object_author", "reference_id",
                   "association")


def copy_columns(table: str, partitioned: bool) -> list[str]:
    return TABLES[table] + (["patient_id"] if partitioned and table in KEYED_BY_OBJECT else [])


MIMES = ["application/pdf"] * 6 + ["text/xml"] * 3 + ["image/jpeg"]
TITLES = ["Compte rendu de consultation", "Compte rendu operatoire", "Lettre de liaison", "Ordonnance",
          "Resultats de biologie", "Compte rendu d'imagerie", "Synthese medicale"]
NULL = "\\N"


def _split(code: str) -> tuple[str, str]:
    c, _, s = code.partition("^^")
    return c, s


def _dtm(t: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(t))


T2010, T2025 = calendar.timegm((2010, 1, 1, 0, 0, 0)), calendar.timegm((2025, 6, 1, 0, 0, 0))


class Generator:
    """The rows of one patient's record, appended to per-table buffers (COPY text lines)."""

    def __init__(self, seed: int, salt: str, partitioned: bool = False):
        self.seed, self.salt, self.partitioned = seed, salt, partitioned
        self.t = Templates(salt)
        self.buf: dict[str, list[str]] = {t: [] for t in TABLES}
        self.now = int(time.time())
        self.entries = 0

    def oid(self, n: int) -> str:
        return f"urn:uuid:{n:08x}-0000-4000-8000-{self.salt}"

    def origin(self, rnd: random.Random, at: int) -> tuple[str, str, str, str]:
        if rnd.random() < 0.2:
            org, person = ORG1, rnd.choice(ORG1_PEOPLE)
        else:
            org = rnd.choice(OTHER_ORGS)
            person = PS1 if rnd.random() < 0.02 else f"PS{org[3:]}{rnd.randrange(5)}x"
        return org, person, str(at), str(int(P.one_month_after(at)))

    def patient(self, p: int, count: int, seq: int) -> None:
        b = self.buf
        starts = {t: len(b[t]) for t in KEYED_BY_OBJECT}
        self._patient(p, count, seq)
        if self.partitioned:
            # The partitioned layout's side rows carry their object's patient (registry/partitions.py).
            tail = "\t" + patient_id(p)
            for t, start in starts.items():
                rows = b[t]
                rows[start:] = [r + tail for r in rows[start:]]

    def _patient(self, p: int, count: int, seq: int) -> None:
        rnd = random.Random(self.seed * 1_000_003 + p)
        b = self.buf
        pid = patient_id(p)
        xpid = xml_text(pid)
        salt = self.salt
        b["patient"].append(f"{pid}\tt\t\\N")
        b["acc_patient"].append(f"{pid}\tf\tf\t{'MT%d' % (p % 300) if p % 2 else NULL}\tf\tf\t{self.now}")
        for person in (PS1, f"PS{p % 40 + 10}a", f"PS{p % 70 + 10}b"):
            b["acc_person"].append(f"{pid}\t{person}\t{S.ACCESS_AUTHORISED}\t\\N\t\\N\t{self.now}")
        if p % 5 == 0:
            b["acc_person"].append(f"{pid}\tPS{p % 90}c\t{S.ACCESS_BLOCKED}\t\\N\t\\N\t{self.now}")
        # Submission times: sorted over the record's span, one per SubmissionSet.
        sizes = []
        left = count
        while left > 0:
            k = min(left, rnd.choice((1, 1, 1, 2, 2, 3, 4, 5, 8, 10)))
            sizes.append(k)
            left -= k
        start = rnd.randrange(T2010, T2025 - 86400 * 365)
        times = sorted(rnd.randrange(start, T2025) for _ in sizes)
        approved: list[str] = []   # entries still Approved, which a later one may replace
        status: dict[str, str] = {}
        de_rows: list[list] = []   # [seq, id, shape, kv, origin, ss_id] filled, status decided at the end
        assoc_rows: list[tuple] = []
        folder_rows: list[tuple] = []
        n_folders = rnd.choice((0, 0, 1, 1, 2, 3)) if rnd.random() < 0.5 else 0
        members_left = {f: rnd.randint(5, 20) for f in range(n_folders)}
        folder_ids: dict[int, str] = {}
        for ss_i, (size, at) in enumerate(zip(sizes, times)):
            org = self.origin(rnd, at)
            st = _dtm(at)
            ss_id = self.oid(seq)
            n8 = f"{seq:08x}"
            ct = rnd.choice(CONTENT_TYPES)
            au = rnd.choice(AUTHORS)
            inst = rnd.choice(INSTITUTIONS)
            c, s = _split(ct)
            b["reg_object"].append("\t".join((
                ss_id, ss_id, "1", "SS", C.STATUS_APPROVED, pid, f"1.2.250.1.999.2.{seq}", str(seq),
                self.t.ss.format(n=n8, salt=salt, pid=xpid, num=seq, st=st, ct=c, cts=s, ctn=display(ct),
                                 au0=xml_text(au), in0=xml_text(inst)), *org, "t")))
            b["submission_set"].append(f"{ss_id}\t{st}\t{SOURCE_ID}\t{ct}")
            b["object_author"].append(f"{ss_id}\t{au}")
            seq += 1
            for _ in range(size):
                de_id = self.oid(seq)
                klass, type_, fmt, ps, hf = (rnd.choice(CLASS_CODES), rnd.choice(TYPE_CODES), rnd.choice(FORMAT_CODES),
                                             rnd.choice(PRACTICE_CODES), rnd.choice(HCFT_CODES))
                conf = rnd.choice(CONF_CODES)
                r = rnd.random()
                dmp = None
                for code, rate in DMP_CODE_RATES:
                    if r < rate:
                        dmp = code
                        break
                    r -= rate
                n_ev = rnd.choice((0, 0, 1, 1, 1, 2, 3))
                evs = rnd.sample(EVENT_CODES, n_ev)
                n_au = 2 if rnd.random() < 0.1 else 1
                aus = [rnd.choice(AUTHORS) for _ in range(n_au)]
                ref = rnd.random() < 0.1
                ct_t = at - rnd.randrange(0, 86400 * 30)
                cts = _dtm(ct_t)
                on_demand = rnd.random() < 0.02
                kv = dict(n=f"{seq:08x}", salt=salt, pid=xpid, num=seq, ct=cts, sst=cts[:8], ssp=cts[:8],
                          hash=f"{rnd.getrandbits(160):040x}", size=rnd.randrange(2_000, 3_000_000),
                          title=xml_text(rnd.choice(TITLES)), mime=rnd.choice(MIMES),
                          ot=C.OBJECT_TYPE_ON_DEMAND if on_demand else C.OBJECT_TYPE_STABLE)
                for field, code in (("class", klass), ("type", type_), ("fmt", fmt), ("ps", ps), ("hf", hf),
                                    ("conf", conf)) + ((("dmp", dmp),) if dmp else ()) + tuple(
                                        (f"ev{i}", e) for i, e in enumerate(evs)):
                    c, s = _split(code)
                    kv[field], kv[field + "s"], kv[field + "n"] = c, s, display(code)
                for i, a in enumerate(aus):
                    kv[f"au{i}"], kv[f"in{i}"] = xml_text(a), xml_text(rnd.choice(INSTITUTIONS))
                if ref:
                    kv["ref"] = f"ORD{seq}"
                shape = (n_ev, n_au, ref, dmp is not None)
                xml = self.t.de(shape).format_map(kv)
                codes = [(C.DE_CONFIDENTIALITY_CODE, conf)] + ([(C.DE_CONFIDENTIALITY_CODE, dmp)] if dmp else []) \
                    + [(C.DE_EVENT_CODE, e) for e in evs]
                de_rows.append((de_id, seq, xml, org, kv, (klass, type_, fmt, ps, hf), codes, aus, ref))
                status[de_id] = C.STATUS_APPROVED
                seq += 1
                a_id = self.oid(seq)
                assoc_rows.append((a_id, C.ASSOC_HAS_MEMBER, ss_id, de_id, "Original", seq, self.t.hm))
                seq += 1
                r = rnd.random()
                if approved and r < RPLC_RATE + APND_RATE:
                    target = approved[rnd.randrange(len(approved))]
                    a_id = self.oid(seq)
                    if r < RPLC_RATE:
                        assoc_rows.append((a_id, C.ASSOC_RPLC, de_id, target, None, seq, self.t.rplc))
                        status[target] = C.STATUS_DEPRECATED
                        approved.remove(target)
                    else:
                        assoc_rows.append((a_id, C.ASSOC_APND, de_id, target, None, seq, self.t.apnd))
                    seq += 1
                if not on_demand:
                    approved.append(de_id)
                # Folders take members as entries come, the Folder itself with its first member.
                for f, left_f in members_left.items():
                    if left_f and rnd.random() < 0.3:
                        if f not in folder_ids:
                            fd_id = folder_ids[f] = self.oid(seq)
                            fc = FOLDER_CODES[f % 2]
                            c, s = _split(fc)
                            folder_rows.append((fd_id, seq, st, org, self.t.fd.format(
                                n=f"{seq:08x}", salt=salt, pid=xpid, num=seq, fc=c, fcs=s, fcn=display(fc),
                                title=f"Dossier {f + 1}"), fc))
                            seq += 1
                            a_id = self.oid(seq)
                            assoc_rows.append((a_id, C.ASSOC_HAS_MEMBER, ss_id, fd_id, "Original", seq, self.t.hm))
                            seq += 1
                        fd_id = folder_ids[f]
                        link = self.oid(seq)
                        assoc_rows.append((link, C.ASSOC_HAS_MEMBER, fd_id, de_id, None, seq, self.t.hm_fd))
                        seq += 1
                        a_id = self.oid(seq)
                        assoc_rows.append((a_id, C.ASSOC_HAS_MEMBER, ss_id, link, "Original", seq, self.t.hm))
                        seq += 1
                        members_left[f] = left_f - 1
        for de_id, n, xml, org, kv, (klass, type_, fmt, ps, hf), codes, aus, ref in de_rows:
            b["reg_object"].append("\t".join((de_id, de_id, "1", "DE", status[de_id], pid, f"1.2.250.1.999.1.{n}",
                                              str(n), xml, *org, "t")))
            b["doc_entry"].append("\t".join((de_id, kv["ot"], klass, type_, fmt, ps, hf, kv["ct"], kv["sst"], kv["ssp"],
                                             kv["hash"], str(kv["size"]), REPOSITORY, kv["mime"],
                                             C.AVAILABILITY_ONLINE)))
            for scheme, code in codes:
                b["object_code"].append(f"{de_id}\t{scheme}\t{code}")
            for a in aus:
                b["object_author"].append(f"{de_id}\t{a}")
            if ref:
                b["reference_id"].append(f"{de_id}\t{kv['ref']}^^^&1.2.250.1.999.9&ISO^urn:ihe:iti:xds:2013:order")
        for fd_id, n, st, org, xml, fc in folder_rows:
            b["reg_object"].append("\t".join((fd_id, fd_id, "1", "FD", C.STATUS_APPROVED, pid, f"1.2.250.1.999.4.{n}",
                                              str(n), xml, *org, "t")))
            b["folder"].append(f"{fd_id}\t{st}")
            b["object_code"].append(f"{fd_id}\t{C.FOLDER_CODE_LIST}\t{fc}")
        for a_id, type_, src, tgt, ss_status, n, tmpl in assoc_rows:
            b["association"].append("\t".join((a_id, type_, src, tgt, C.STATUS_APPROVED, ss_status or NULL, str(n),
                                               NULL if tmpl is None else
                                               tmpl.format(n=f"{n:08x}", salt=salt, src=src, tgt=tgt))))
        self.entries += count


def _worker(args) -> tuple[int, float]:
    url, patients, counts, bases, seed, salt, batch, compression, partitioned = args
    import psycopg2

    conn = psycopg2.connect(url)
    cur = conn.cursor()
    cur.execute("SET synchronous_commit = off")
    if compression:
        # How TOAST compresses the stored XML of the rows this session writes (a column without its own
        # COMPRESSION setting takes the session's default).
        cur.execute("SET default_toast_compression = %s", (compression,))
    gen = Generator(seed, salt, partitioned)
    t_copy = 0.0

    def flush():
        nonlocal t_copy
        t0 = time.perf_counter()
        for table, lines in gen.buf.items():
            if lines:
                lines.append("")
                cur.copy_expert(f"COPY {table} ({', '.join(copy_columns(table, partitioned))}) FROM STDIN",
                                io.StringIO("\n".join(lines)))
                lines.clear()
        t_copy += time.perf_counter() - t0

    done = 0
    for p in patients:
        gen.patient(p, counts[p], bases[p])
        done += counts[p]
        if done >= batch:
            flush()
            done = 0
    flush()
    conn.commit()
    conn.close()
    return gen.entries, t_copy


# --- the database around the load -----------------------------------------------------------------------------

def _dsn(url: str) -> str:
    return re.sub(r"^postgresql\+psycopg2://", "postgresql://", url)


def _catalog(cur) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]], list[tuple[str, str]]]:
    """The registry tables' foreign keys, primary keys and other indexes: (table, name, definition)."""
    tables = list(TABLES)
    cur.execute("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), contype FROM pg_constraint "
                "WHERE conrelid::regclass::text = ANY(%s) AND contype IN ('f', 'p', 'u')", (tables,))
    cons = cur.fetchall()
    fks = [(t, n, d) for t, n, d, k in cons if k == "f"]
    pks = [(t, n, d) for t, n, d, k in cons if k in ("p", "u")]
    owned = {n for _, n, _ in pks}
    cur.execute("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
                "AND tablename = ANY(%s)", (tables,))
    # A partitioned table's index reads "ON ONLY t", which would build no partition's index.
    idx = [(t, n, d.replace(" ON ONLY ", " ON ", 1)) for t, n, d in cur.fetchall() if n not in owned]
    return fks, pks, idx


def _run_parallel(url: str, statements: list[str], jobs: int) -> None:
    import psycopg2
    from concurrent.futures import ThreadPoolExecutor

    def run(sql):
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn.cursor() as c:
            c.execute("SET maintenance_work_mem = '1GB'")
            t0 = time.perf_counter()
            c.execute(sql)
        conn.close()
        return sql, time.perf_counter() - t0

    # Largest first, so that the long builds start together.
    with ThreadPoolExecutor(jobs) as ex:
        for sql, secs in ex.map(run, statements):
            print(f"    {secs:6.1f} s  {sql[:110]}", flush=True)


def load(url: str, entries: int, jobs: int = 2, seed: int = 18, batch: int = 5000,
         compression: str | None = None, partitions: int = 0) -> dict:
    """Create the registry schema by its migrations, drop its indexes and constraints, COPY `entries`
    DocumentEntries (and everything around them) from `jobs` processes, rebuild, ANALYZE."""
    import psycopg2
    from registry.store import RegistryStore

    dsn = _dsn(url)
    t0 = time.perf_counter()
    store = RegistryStore(url, partitions=partitions)
    store.migrate()
    store.engine.dispose()
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM reg_object")
    if cur.fetchone()[0]:
        sys.exit("the database already holds registry objects; load into an empty one")
    fks, pks, idx = _catalog(cur)
    for t, n, _ in fks:
        cur.execute(f'ALTER TABLE {t} DROP CONSTRAINT "{n}"')
    for t, n, _ in pks:
        cur.execute(f'ALTER TABLE {t} DROP CONSTRAINT "{n}"')
    for _, n, _ in idx:
        cur.execute(f'DROP INDEX "{n}"')
    counts = patient_counts(entries, seed)
    bases = seq_bounds(counts)
    salt = f"{random.Random(seed).getrandbits(48):012x}"
    # Patients dealt round-robin by size, so that every process gets its share of the large records.
    order = sorted(range(len(counts)), key=lambda p: -counts[p])
    parts = [order[w::jobs] for w in range(jobs)]
    t_gen = time.perf_counter()
    print(f"  {len(counts):,} patients, {entries:,} entries, {jobs} processes", flush=True)
    with mp.get_context("fork").Pool(jobs) as pool:
        results = pool.map(_worker, [(dsn, part, counts, bases, seed, salt, batch, compression, partitions > 0)
                                     for part in parts])
    t_copied = time.perf_counter()
    copy_rate = entries / (t_copied - t_gen)
    print(f"  rows copied in {t_copied - t_gen:.0f} s ({copy_rate:,.0f} entries/s; COPY itself "
          f"{', '.join(f'{c:.0f}' for _, c in results)} s per process); building indexes", flush=True)
    cur.execute("SELECT setval('reg_seq', %s)", (bases[-1] + 4 * counts[-1] + 64,))
    if partitions:
        # Built after its rows, like the other keys.
        t_key = time.perf_counter()
        cur.execute("ALTER TABLE registry_key DROP CONSTRAINT registry_key_pkey")
        cur.execute("INSERT INTO registry_key (id, patient_id, unique_id) SELECT id, patient_id, unique_id "
                    "FROM reg_object UNION ALL SELECT id, patient_id, NULL FROM association")
        cur.execute("ALTER TABLE registry_key ADD PRIMARY KEY (id)")
        cur.execute("ALTER TABLE registry_uid DROP CONSTRAINT registry_uid_pkey")
        cur.execute("INSERT INTO registry_uid SELECT DISTINCT unique_id, patient_id FROM reg_object "
                    "WHERE unique_id IS NOT NULL")
        cur.execute("ALTER TABLE registry_uid ADD PRIMARY KEY (unique_id, patient_id)")
        print(f"  registry_key and registry_uid filled in {time.perf_counter() - t_key:.0f} s", flush=True)
    # Primary keys first (the foreign keys need reg_object's), each table's builds side by side.
    _run_parallel(dsn, [f"ALTER TABLE {t} ADD CONSTRAINT \"{n}\" {d}" for t, n, d in pks], jobs)
    _run_parallel(dsn, [d for _, _, d in idx], jobs)
    t_idx = time.perf_counter()
    _run_parallel(dsn, [f"ALTER TABLE {t} ADD CONSTRAINT \"{n}\" {d}" for t, n, d in fks], jobs)
    t_fk = time.perf_counter()
    _run_parallel(dsn, [f"VACUUM (ANALYZE) {t}" for t in list(TABLES) + (["registry_key", "registry_uid"] if partitions else [])], jobs)
    t_end = time.perf_counter()
    conn.close()
    out = dict(entries=entries, patients=len(counts), total=t_end - t0, copy=t_copied - t_gen,
               indexes=t_idx - t_copied, fks=t_fk - t_idx, analyze=t_end - t_fk)
    print(f"  loaded {entries:,} entries in {out['total']:.0f} s ({entries / out['total']:,.0f} entries/s): "
          f"COPY {out['copy']:.0f} s, indexes {out['indexes']:.0f} s, foreign keys {out['fks']:.0f} s, "
          f"VACUUM ANALYZE {out['analyze']:.0f} s", flush=True)
    return out


def sizes(url: str) -> None:
    """Per table: rows, heap, TOAST, each index, and bytes per DocumentEntry; and the stored XML itself."""
    import psycopg2

    conn = psycopg2.connect(_dsn(url))
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM doc_entry")
    n = cur.fetchone()[0] or 1
    print(f"\nsizes ({n:,} DocumentEntries):")
    print(f"  {'relation':<34}{'rows':>12}{'MB':>10}{'B/entry':>10}")
    total = 0
    cur.execute("SELECT to_regclass('registry_key') IS NOT NULL")
    keyed = cur.fetchone()[0]
    for t in list(TABLES) + (["registry_key", "registry_uid"] if keyed else []):
        # Summed over the partitions of a partitioned table (pg_partition_tree gives a plain table itself).
        cur.execute("SELECT sum(greatest(c.reltuples, 0))::bigint, sum(pg_relation_size(c.oid)), "
                    "sum(coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0)), "
                    "sum(pg_total_relation_size(c.oid)) FROM pg_class c WHERE c.oid = %(t)s::regclass "
                    "AND c.relkind <> 'p' OR c.oid IN (SELECT relid FROM pg_partition_tree(%(t)s::regclass) "
                    "WHERE isleaf)", {"t": t})
        rows, heap, toast, tot = (int(v or 0) for v in cur.fetchone())
        total += tot
        print(f"  {t:<34}{rows:>12,}{tot / 1e6:>10.0f}{tot / n:>10.0f}")
        print(f"    {'heap':<32}{'':>12}{heap / 1e6:>10.0f}{heap / n:>10.0f}")
        if toast:
            print(f"    {'toast':<32}{'':>12}{toast / 1e6:>10.0f}{toast / n:>10.0f}")
        cur.execute("SELECT i.indexrelid::regclass::text, coalesce((SELECT sum(pg_relation_size(p.relid)) FROM "
                    "pg_partition_tree(i.indexrelid) p WHERE p.isleaf), pg_relation_size(i.indexrelid)) "
                    "FROM pg_index i WHERE i.indrelid = %s::regclass ORDER BY 1", (t,))
        for name, size in ((name, int(size or 0)) for name, size in cur.fetchall()):
            print(f"    {name:<32}{'':>12}{size / 1e6:>10.0f}{size / n:>10.0f}")
    print(f"  {'total':<34}{'':>12}{total / 1e6:>10.0f}{total / n:>10.0f}")
    cur.execute("SELECT kind, count(*), avg(octet_length(xml)), avg(pg_column_size(xml)) FROM reg_object "
                "WHERE id IN (SELECT id FROM reg_object TABLESAMPLE SYSTEM (1)) GROUP BY kind ORDER BY kind")
    for kind, cnt, raw, stored in cur.fetchall():
        print(f"  stored XML of {kind} (1% sample, {cnt:,}): {raw:,.0f} B as text, {stored:,.0f} B as stored")
    cur.execute("SELECT pg_database_size(current_database())")
    print(f"  database: {cur.fetchone()[0] / 1e9:.2f} GB")
    conn.close()


# --- a kept PostgreSQL cluster ----------------------------------------------------------------------------------

def _bin(name: str) -> str:
    from tests.pgserver import _bin as find

    found = find(name)
    if not found:
        sys.exit(f"{name} not found (PostgreSQL binaries)")
    return found


class Cluster:
    """A PostgreSQL cluster in a folder that outlives the run (a 10 M registry takes long to load), with
    settings for bulk loading and benchmarking: no fsync, large WAL, 2 GB shared buffers."""

    def __init__(self, pgdata: str, port: int | None = None):
        self.dir = os.path.abspath(pgdata)
        self.data = os.path.join(self.dir, "data")
        self.port = port
        self.started = False

    def _run(self, args: list[str]) -> None:
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--"] + args
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)

    def start(self) -> str:
        pid_file = os.path.join(self.data, "postmaster.pid")
        if os.path.exists(pid_file):
            # Already running (another bench run, or --keep-running): use it and leave it running.
            lines = open(pid_file).read().splitlines()
            if len(lines) > 3 and os.path.exists(f"/proc/{lines[0].strip()}"):
                self.port = int(lines[3])
                return f"postgresql+psycopg2://xds@127.0.0.1:{self.port}/postgres"
        if not os.path.isdir(self.data):
            os.makedirs(self.dir, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(self.dir, "postgres", "postgres")
            self._run([_bin("initdb"), "-D", self.data, "-U", "xds", "--auth=trust", "-E", "UTF8", "--no-sync"])
        if self.port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                f"-c full_page_writes=off -c wal_level=minimal -c max_wal_senders=0 -c max_wal_size=2GB "
                f"-c checkpoint_timeout=1h -c shared_buffers=2GB -c maintenance_work_mem=1GB "
                f"-c max_parallel_maintenance_workers=2 -c max_connections=200")
        self._run([_bin("pg_ctl"), "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "-o", opts, "start"])
        self.started = True
        return f"postgresql+psycopg2://xds@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if self.started:
            self._run([_bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop"])
            self.started = False


def db_name(entries: int, compression: str | None, partitions: int = 0) -> str:
    return (f"xds_{entries}" + (f"_{compression}" if compression and compression != "pglz" else "")
            + (f"_p{partitions}" if partitions else ""))


def database(admin_url: str, name: str, fresh: bool) -> str:
    import psycopg2

    conn = psycopg2.connect(_dsn(admin_url))
    conn.autocommit = True
    with conn.cursor() as c:
        c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        exists = c.fetchone() is not None
        if fresh and exists:
            c.execute(f'DROP DATABASE "{name}"')
        if fresh or not exists:
            c.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


# --- verification -----------------------------------------------------------------------------------------------

def verify(url: str, samples: int = 30, seed: int = 5) -> None:
    """The registry's stored queries, in process, against raw SQL over the loaded rows, for a sample of
    patients: FindDocuments (Approved; and Approved+Deprecated with a classCode), GetAll, GetFolderAndContents,
    GetRelatedDocuments. Every answer must hold the same objects."""
    import psycopg2
    from registry.config import RegistryConfig
    from registry.query import stored_query
    from registry.store import RegistryStore

    store = RegistryStore(url)
    config = RegistryConfig()
    conn = psycopg2.connect(_dsn(url))
    cur = conn.cursor()
    rnd = random.Random(seed)
    cur.execute("SELECT patient_id FROM patient ORDER BY patient_id")
    pids = [r[0] for r in cur.fetchall()]
    checked = 0

    def ask(req) -> list[str]:
        resp = stored_query(store, req, config)
        if resp.get("status") != C.RESPONSE_SUCCESS:
            raise SystemExit("stored query failed: " + etree.tostring(resp).decode()[:1500])
        rol = resp.find(f"{{{RIM}}}RegistryObjectList")
        out = [el.get("id") for el in (rol if rol is not None else [])]
        for el in rol if rol is not None else []:
            # Every answered object must be well-formed ebRIM the model reads back.
            from xds.ebrim import read_object
            read_object(el)
        return out

    def same(name, got, want):
        nonlocal checked
        if got != want:
            raise SystemExit(f"{name}: stored query answered {len(got)} objects, raw SQL {len(want)}; "
                             f"first difference {next((a, b) for a, b in zip(got + [None] * len(want), want + [None] * len(got)) if a != b)}")
        checked += 1

    approved = f"('{C.STATUS_APPROVED}')"
    for pid in rnd.sample(pids, min(samples, len(pids))):
        got = ask(builder.adhoc_query_request(C.SQ_FIND_DOCUMENTS, [
            ("$XDSDocumentEntryPatientId", f"'{pid}'"), ("$XDSDocumentEntryStatus", approved)]))
        cur.execute("SELECT o.id FROM reg_object o JOIN doc_entry d ON d.id = o.id WHERE o.patient_id = %s "
                    "AND o.kind = 'DE' AND o.status = %s AND d.entry_type = %s ORDER BY o.seq",
                    (pid, C.STATUS_APPROVED, C.OBJECT_TYPE_STABLE))
        want = [r[0] for r in cur.fetchall()]
        if len(want) > config.max_query_results:
            continue
        same("FindDocuments", got, want)
        klass = rnd.choice(CLASS_CODES)
        got = ask(builder.adhoc_query_request(C.SQ_FIND_DOCUMENTS, [
            ("$XDSDocumentEntryPatientId", f"'{pid}'"),
            ("$XDSDocumentEntryStatus", f"('{C.STATUS_APPROVED}','{C.STATUS_DEPRECATED}')"),
            ("$XDSDocumentEntryClassCode", f"('{klass}')"),
            ("$XDSDocumentEntryType", f"('{C.OBJECT_TYPE_STABLE}','{C.OBJECT_TYPE_ON_DEMAND}')")]))
        cur.execute("SELECT o.id FROM reg_object o JOIN doc_entry d ON d.id = o.id WHERE o.patient_id = %s "
                    "AND o.kind = 'DE' AND d.class_code = %s ORDER BY o.seq", (pid, klass))
        same("FindDocuments classCode, both statuses", got, [r[0] for r in cur.fetchall()])
        got = ask(builder.adhoc_query_request(C.SQ_GET_ALL, [
            ("$patientId", f"'{pid}'"), ("$XDSDocumentEntryStatus", approved), ("$XDSSubmissionSetStatus", approved),
            ("$XDSFolderStatus", approved)]))
        cur.execute("SELECT id FROM reg_object o WHERE patient_id = %s AND status = %s AND (kind <> 'DE' OR "
                    "EXISTS (SELECT 1 FROM doc_entry d WHERE d.id = o.id AND d.entry_type = %s))",
                    (pid, C.STATUS_APPROVED, C.OBJECT_TYPE_STABLE))
        objs = {r[0] for r in cur.fetchall()}
        cur.execute("SELECT id FROM association WHERE status = %s AND (source = ANY(%s) OR target = ANY(%s))",
                    (C.STATUS_APPROVED, list(objs), list(objs)))
        assocs = {r[0] for r in cur.fetchall()}
        if len(objs) + len(assocs) <= config.max_query_results:
            same("GetAll", sorted(got), sorted(objs | assocs))
        cur.execute("SELECT id FROM reg_object WHERE patient_id = %s AND kind = 'FD'", (pid,))
        for (fd,) in cur.fetchall():
            got = ask(builder.adhoc_query_request(C.SQ_GET_FOLDER_AND_CONTENTS, [("$XDSFolderEntryUUID", f"'{fd}'")]))
            cur.execute("SELECT a.id, a.target FROM association a JOIN reg_object o ON o.id = a.target "
                        "JOIN doc_entry d ON d.id = o.id WHERE a.source = %s AND a.type = %s "
                        "AND d.entry_type = %s", (fd, C.ASSOC_HAS_MEMBER, C.OBJECT_TYPE_STABLE))
            rows = cur.fetchall()
            same("GetFolderAndContents", sorted(got), sorted({fd} | {a for a, _ in rows} | {t for _, t in rows}))
        cur.execute("SELECT a.source, a.target, a.id FROM association a JOIN reg_object o ON o.id = a.source "
                    "WHERE o.patient_id = %s AND a.type IN (%s, %s)", (pid, C.ASSOC_RPLC, C.ASSOC_APND))
        for src, tgt, a_id in cur.fetchall()[:3]:
            got = ask(builder.adhoc_query_request(C.SQ_GET_RELATED_DOCUMENTS, [
                ("$XDSDocumentEntryEntryUUID", f"'{tgt}'"),
                ("$AssociationTypes", f"('{C.ASSOC_RPLC}','{C.ASSOC_APND}')")]))
            cur.execute("SELECT a.id, a.source FROM association a JOIN doc_entry d ON d.id = a.source WHERE a.target = %s "
                        "AND a.type IN (%s, %s) AND d.entry_type = %s", (tgt, C.ASSOC_RPLC, C.ASSOC_APND,
                                                                         C.OBJECT_TYPE_STABLE))
            rows = cur.fetchall()
            cur.execute("SELECT a.id, a.target FROM association a WHERE a.source = %s AND a.type IN (%s, %s)",
                        (tgt, C.ASSOC_RPLC, C.ASSOC_APND))
            rows += cur.fetchall()
            want = sorted({tgt} | {x for r in rows for x in r}) if rows else []
            same("GetRelatedDocuments", sorted(got), want)
    cur.execute("SELECT kind, status, count(*) FROM reg_object GROUP BY 1, 2 ORDER BY 1, 2")
    print("  objects:", ", ".join(f"{k} {s.rsplit(':', 1)[-1]} {n:,}" for k, s, n in cur.fetchall()))
    cur.execute("SELECT type, count(*) FROM association GROUP BY 1 ORDER BY 1")
    print("  associations:", ", ".join(f"{t.rsplit(':', 1)[-1]} {n:,}" for t, n in cur.fetchall()))
    print(f"verify: {checked} stored-query answers equal to raw SQL, every object read back as ebRIM")
    conn.close()
    store.engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="generator+COPY processes")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--pgdata", help="a cluster folder kept after the run (created if missing)")
    ap.add_argument("--db", help="an existing PostgreSQL server's URL (instead of --pgdata)")
    ap.add_argument("--name", help="database name (default xds_<entries>)")
    ap.add_argument("--compression", choices=("pglz", "lz4"),
                    help="TOAST compression of the stored XML for this load (default: the server's, pglz)")
    ap.add_argument("--partitions", type=int, default=0,
                    help="the registry's tables hash-partitioned by patient into this many partitions (0: plain)")
    ap.add_argument("--verify", action="store_true", help="compare stored queries with raw SQL after loading")
    ap.add_argument("--keep-running", action="store_true", help="leave the --pgdata cluster running")
    args = ap.parse_args()
    cluster = None
    if args.db:
        admin = args.db
    else:
        cluster = Cluster(args.pgdata or "/work/bench-data/pg")
        admin = cluster.start()
    try:
        url = database(admin, args.name or db_name(args.entries, args.compression, args.partitions), fresh=True)
        print(f"loading {url}")
        load(url, args.entries, args.jobs, args.seed, compression=args.compression, partitions=args.partitions)
        sizes(url)
        if args.verify:
            verify(url)
    finally:
        if cluster and not args.keep_running:
            cluster.stop()


if __name__ == "__main__":
    main()
