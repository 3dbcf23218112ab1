"""Turn a test plan step into the request to send, in the toolkit engine's order:
file → run parameters → UseReport values → standard tokens → (submissions only)
ebRIM 3.0 → patient id → UseId → uniqueIds → sourceId → UUIDs → wrapping."""
from __future__ import annotations

import base64
import mimetypes
import os
from dataclasses import dataclass, field

from lxml import etree

from xds import constants as C
from xds import mtom

from . import linkage, rewrite, substitute, translate
from .context import EngineError, SectionContext
from .plan import Step, Transaction, parse_xml_file
from .transactions import KINDS, Kind

_XDSB_PNR = C.q(C.NS_XDSB, "ProvideAndRegisterDocumentSetRequest")
_LCM_SOR = C.q(C.NS_LCM, "SubmitObjectsRequest")


@dataclass
class Prepared:
    kind: Kind
    payload: etree._Element | None = None
    attachments: list[tuple[str, str, str]] = field(default_factory=list)
    use_mtom: bool = False
    assigned: dict[str, dict[str, str]] = field(default_factory=dict)
    link_values: dict[str, str] = field(default_factory=dict)   # UseReport/UseId values, for Assert texts
    patient_id: str | None = None          # ITI-8: the id to feed
    http_body: bytes | None = None
    http_headers: dict[str, str] = field(default_factory=dict)
    requested_documents: list[tuple[str, str]] = field(default_factory=list)  # Retrieve: (repository, uid)
    submitted_documents: dict[str, str] = field(default_factory=dict)          # PnR: uniqueId → file


def find_file(ctx: SectionContext, name: str) -> str:
    """Files are named relative to the section folder; some plans name them from the test folder."""
    for base in (ctx.section.path, ctx.test.path):
        path = os.path.normpath(os.path.join(base, name))
        if os.path.isfile(path):
            return path
    raise EngineError(f"file {name!r} not found beside {os.path.relpath(ctx.section.path, ctx.test.path) or '.'} "
                      f"of test {ctx.test_id}")


def prepare(step: Step, ctx: SectionContext) -> Prepared:
    tx = step.transaction
    if tx is None:
        raise EngineError(f"step {step.id} has no transaction")
    kind = KINDS[tx.kind]
    out = Prepared(kind, use_mtom=kind.mtom and not tx.has("NoMTOM"))
    out.link_values = linkage.use_report_values(ctx, tx.use_reports)
    if tx.kind == "PatientIdentityFeedTransaction":
        out.patient_id = _feed_patient_id(tx, ctx, out.link_values)
        return out
    if tx.kind == "PatientMoveTransaction":  # ITI-64: its ids are the UseReport values (conformance/patient_move)
        return out
    if tx.kind == "HttpTransaction":
        with open(find_file(ctx, tx.body_file or ""), "rb") as fh:
            out.http_body = fh.read()
        out.http_headers = dict(tx.headers)
        return out
    if tx.kind == "NullTransaction":
        out.link_values.update(linkage.use_id_values(ctx, tx.use_ids, tolerant=True))
        return out
    if not tx.metadata_file:
        raise EngineError(f"{tx.kind} of step {step.id} names no MetadataFile")
    root = parse_xml_file(find_file(ctx, tx.metadata_file))
    substitute.replace_in_tree(root, ctx.params)
    substitute.replace_in_tree(root, out.link_values)
    substitute.replace_in_tree(root, substitute.standard_tokens(ctx.config.home_community_id))
    if kind.submission and tx.parse_metadata:
        out.payload = _submission(tx, kind, root, ctx, out)
    else:
        out.payload = _plain(tx, root, ctx, out)
    return out


def _feed_patient_id(tx: Transaction, ctx: SectionContext, links: dict[str, str]) -> str:
    if tx.has("CreateNewPatientId"):
        return ctx.config.ids.pid()
    if tx.patient_id:
        return substitute.replace_text(substitute.replace_text(tx.patient_id, ctx.params), links)
    pid = ctx.params.get("$patientid$") or ctx.pid
    if not pid:
        raise EngineError("Patient Identity Feed: no patient id (no $patientid$ run parameter, no PatientID)")
    return pid


def _plain(tx: Transaction, root: etree._Element, ctx: SectionContext, out: Prepared) -> etree._Element:
    """Queries, Retrieve, ITI-62 and ITI-86 files go out as written, once their tokens are filled in."""
    # Retrieve takes its ids from UseReport; its stray UseIds (12021) are not an error.
    tolerant = tx.kind == "RetrieveTransaction"
    ids = linkage.use_id_values(ctx, tx.use_ids, tolerant=tolerant)
    ids.update(linkage.repository_id_values(ctx, tx.use_repository_ids))
    substitute.replace_in_tree(root, ids)
    out.link_values.update(ids)
    if tx.has("CleanParams"):
        _clean_params(root)
    if tx.kind == "RetrieveTransaction":
        for req in root.iter(C.q(C.NS_XDSB, "DocumentRequest")):
            out.requested_documents.append((req.findtext(C.q(C.NS_XDSB, "RepositoryUniqueId"), "").strip(),
                                            req.findtext(C.q(C.NS_XDSB, "DocumentUniqueId"), "").strip()))
    return root


def _clean_params(root: etree._Element) -> None:
    """CleanParams: drop query Slots and Retrieve DocumentRequests whose tokens stayed unresolved."""
    for tag in (C.q(C.NS_RIM, "Slot"), C.q(C.NS_XDSB, "DocumentRequest")):
        for el in list(root.iter(tag)):
            if "$" in "".join(el.itertext()) and el.getparent() is not None:
                el.getparent().remove(el)


def _submission(tx: Transaction, kind: Kind, root: etree._Element, ctx: SectionContext,
                out: Prepared) -> etree._Element:
    file_documents = []
    if root.tag == _XDSB_PNR:
        # A ready-made PnR wrapper (ReposAcceptanceTest-*): its metadata is rewritten like any other.
        file_documents = [d for d in root if d.tag == C.q(C.NS_XDSB, "Document")]
        inner = root.find(_LCM_SOR)
        if inner is None:
            raise EngineError(f"{tx.metadata_file}: ProvideAndRegisterDocumentSetRequest without SubmitObjectsRequest")
        root = inner
    if not tx.has("NoConvert"):
        root = translate.to_v3(root)
    assigned = {name: {} for name in ("AssignedUids", "AssignedUuids", "AssignedPatientId", "AssignedSourceId")}
    if not tx.has("NoPatientId") and ctx.pid:
        assigned["AssignedPatientId"] = rewrite.force_patient_id(root, ctx.pid)
    ids = linkage.use_id_values(ctx, tx.use_ids)
    substitute.replace_in_tree(root, ids)
    out.link_values.update(ids)
    if tx.assign_uids:
        assigned["AssignedUids"] = rewrite.assign_unique_ids(root, ctx.config.ids.uid, tx.no_assign_ids,
                                                             tx.uuid_excludes)
    assigned["AssignedSourceId"] = rewrite.set_source_id(root, ctx.config.source_id)
    if tx.assign_uuids:
        assigned["AssignedUuids"] = rewrite.assign_uuids(root, ctx.config.ids.uuid)
    out.assigned = assigned
    if kind.wrap != "pnr":
        return root
    wrapper = etree.Element(_XDSB_PNR, nsmap={"xdsb": C.NS_XDSB})
    wrapper.append(root)
    if not tx.documents:
        wrapper.extend(file_documents)
    uuids = assigned["AssignedUuids"]
    for symbol, filename in tx.documents:
        path = find_file(ctx, filename)
        doc_id = uuids.get(symbol, symbol)
        doc = etree.SubElement(wrapper, C.q(C.NS_XDSB, "Document"), id=doc_id)
        uid = _unique_id(root, doc_id)
        if uid:
            out.submitted_documents[uid] = path
        if out.use_mtom:
            cid = mtom.new_cid()
            mtom.xop_include(doc, cid)
            out.attachments.append((cid, _mime_type(root, doc_id, path), path))
        else:
            with open(path, "rb") as fh:
                doc.text = base64.b64encode(fh.read()).decode("ascii")
    return wrapper


def _unique_id(root: etree._Element, doc_id: str) -> str | None:
    for eo in root.iter(C.q(C.NS_RIM, "ExtrinsicObject")):
        if eo.get("id") == doc_id:
            for ei in eo.iter(C.q(C.NS_RIM, "ExternalIdentifier")):
                if ei.get("identificationScheme") == C.DE_UNIQUE_ID:
                    return ei.get("value")
    return None


def _mime_type(root: etree._Element, doc_id: str, path: str) -> str:
    for eo in root.iter(C.q(C.NS_RIM, "ExtrinsicObject")):
        if eo.get("id") == doc_id and eo.get("mimeType"):
            return eo.get("mimeType")
    return mimetypes.guess_type(path)[0] or "application/octet-stream"
