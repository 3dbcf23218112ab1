"""ITI-41 Provide and Register Document Set-b: the repository's whole handling of one request.

Documents are checked against their metadata, staged, recorded as pending, and made retrievable
only once the registry holds the ITI-42 we send it (repository/settle.py); a refusal leaves nothing
behind, and an unanswered ITI-42 is settled by asking the registry before the source is told.
"""
from __future__ import annotations

import binascii
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Callable

from lxml import etree

from xds import constants as C
from xds import errors as E
from xds import faults, mtom
from xds.ebrim import parse_submission, to_element
from xds.errors import ErrorList, XdsError, XdsException
from xds.model import DocumentEntry, Submission
from xds.validation import Mode, cda, validate_submission
from .blobs import BlobStore, Staged
from .forward import RegistryLink, RegistryUnanswered
from .settle import Ledger, Outcome
from .store import DocumentRow, RepositoryStore

log = logging.getLogger(__name__)

PNR_TAG = C.q(C.NS_XDSB, "ProvideAndRegisterDocumentSetRequest")
DOCUMENT_TAG = C.q(C.NS_XDSB, "Document")
_XOP_INCLUDE = C.q(C.NS_XOP, "Include")
_BASE64_STEP = 1024 * 1024  # characters decoded at a time
_WHITESPACE = b" \t\r\n"


@dataclass
class _Content:
    """One xdsb:Document: where its bytes are, and their SHA-1 and size once known."""

    id: str
    attachment: mtom.Attachment | None = None
    staged: Staged | None = None

    @property
    def sha1(self) -> str:
        return self.staged.sha1 if self.staged else self.attachment.sha1

    @property
    def size(self) -> int:
        return self.staged.size if self.staged else self.attachment.size


class Provide:
    def __init__(self, blobs: BlobStore, store: RepositoryStore, registry: RegistryLink, repository_id: str,
                 max_document_bytes: int, ledger: Ledger | None = None, profile: str | None = None,
                 lenient: bool = False, implied_references: bool = False):
        self.blobs = blobs
        self.store = store
        self.registry = registry
        self.repository_id = repository_id
        self.max_document_bytes = max_document_bytes
        self.profile = profile  # the metadata validation profile (xds/validation), the registry's too
        self.lenient = lenient  # the profile's checks against document content only warn
        self.implied_references = implied_references
        self.ledger = ledger or Ledger(store, blobs, registry, repository_id, registry_timeout=30.0)

    def __call__(self, body: etree._Element, message: mtom.MtomMessage | None,
                 xop: dict[etree._Element, mtom.Attachment] | None = None,
                 forward: list[etree._Element] | None = None, principal=None) -> list[XdsError]:
        """Returns the warnings of a Success; raises XdsException otherwise.

        xop: the attachment each xop:Include of the request names, keyed by the Include's parent, as
        resolved once by the HTTP application (SoapRequest.xop); message: the MTOM message they are
        parts of, which hands over (take) the spooled files the repository moves into its store.
        """
        if body.tag != PNR_TAG:
            raise XdsException(E.REPOSITORY_ERROR, f"expected xdsb:ProvideAndRegisterDocumentSetRequest, "
                               f"got {etree.QName(body).localname}", "Body")
        staged: list[Staged] = []
        try:
            return self._run(body, message, xop or {}, staged, forward or [], principal)
        finally:
            # Whatever is still listed was neither committed nor dropped: a failure on the way.
            for s in staged:
                self.blobs.discard(s)

    def _run(self, body, message, xop, staged: list[Staged], forward: list[etree._Element],
             principal=None) -> list[XdsError]:
        contents = read_documents(body, xop, lambda ident, text: self._stage_inline(ident, text, staged))
        sub = parse_submission(body)
        pairs, errors = check_documents(body, sub, contents, profile=self.profile, lenient=self.lenient,
                                        implied_references=self.implied_references,
                                        repository_id=self.repository_id,
                                        max_document_bytes=self.max_document_bytes)
        errors.raise_if_errors()

        stored = self.store.get_many(de.unique_id for de, _ in pairs if de.unique_id)
        self._check_stored(pairs, stored, errors)
        errors.raise_if_errors()

        for de, content in pairs:
            self._fill_slots(de, content)
        self._stage_attachments(pairs, message, staged)
        faults.point("staged")
        # A uniqueId stored with the same hash is this very document: its new copy is not needed.
        for de, content in pairs:
            if de.unique_id in stored:
                staged.remove(content.staged)
                self.blobs.discard(content.staged)
        fresh = [(de.unique_id, content.staged, de.mime_type or "application/octet-stream")
                 for de, content in pairs if de.unique_id not in stored]
        deadline = self.ledger.deadline()
        pending = self.ledger.record(fresh, deadline)
        # From here the pending rows own the staged files: whatever happens, settlement finishes them.
        for _, st, _ in fresh:
            staged.remove(st)
        faults.point("pending")
        return self._register(sub, pending, deadline, forward, principal) + errors.warnings

    def _register(self, sub, pending, deadline, forward, principal=None) -> list[XdsError]:
        try:
            warnings = self.registry.register(sub.request, deadline, forward, principal)
        except RegistryUnanswered as exc:
            return self._settle_unanswered(exc, pending, deadline)
        except XdsException as exc:
            try:
                self.ledger.refused(pending, exc)
            except Exception:
                # The source must still see the registry's own errors; the rows stay, and settlement
                # discards them once it can reach the database.
                log.exception("discarding refused documents failed; settlement will finish it")
            raise
        except Exception:
            # The registration has ended in an error of our own (in process, or reading its answer); the
            # exception says nothing of a commit that failed midway, so the registry is asked at once.
            self.ledger.settle_unanswered(pending, deadline, ended=True)
            raise
        faults.point("registered")
        try:
            self.ledger.commit(pending)
        except Exception:
            # Registered, and the bytes are safe in staging under their pending rows: the settlement
            # job commits them, so the source's Success stays true.
            log.exception("committing registered documents %s failed; settlement will finish it",
                          [p.unique_id for p in pending])
            warnings = warnings + [XdsError(E.REPOSITORY_ERROR, "the documents are registered; making them "
                                            "retrievable failed and is being retried", "", C.SEVERITY_WARNING)]
        return warnings

    def _settle_unanswered(self, exc: XdsException, pending, deadline) -> list[XdsError]:
        outcome = self.ledger.settle_unanswered(pending, deadline)
        if outcome is Outcome.REGISTERED:
            log.warning("ITI-42 got no answer (%s), but the registry holds the submission: committed", exc)
            return [XdsError(E.REGISTRY_NOT_AVAILABLE, "the registry's answer was lost; asked afterwards, it holds "
                             "this submission, and the documents are stored", "", C.SEVERITY_WARNING)]
        if outcome is Outcome.NOT_REGISTERED:
            raise exc
        raise XdsException(E.REGISTRY_NOT_AVAILABLE, f"{exc.errors[0].message}; whether the registry registered "
                           "the submission could not be learnt afterwards either. The documents are kept pending: "
                           "they become retrievable if the registry holds them, and are discarded if it does not. "
                           "Query the registry before submitting again.", exc.errors[0].location)

    def _stage_attachments(self, pairs, message, staged: list[Staged]) -> None:
        uses: dict[str, int] = {}
        for _, content in pairs:
            if content.staged is None:
                uses[content.attachment.path] = uses.get(content.attachment.path, 0) + 1
        for _, content in pairs:
            if content.staged is not None:
                continue
            att = content.attachment
            # Documents may share a MIME part: copies first, and the last user takes the file over.
            uses[att.path] -= 1
            content.staged = self.blobs.stage(att.path, sha1=att.sha1, size=att.size, move=uses[att.path] == 0)
            staged.append(content.staged)
            if message is not None and not os.path.exists(att.path):
                # Moved into the store: the spool's cleanup must not unlink a name another request may reuse.
                message.take(att.cid)

    def _stage_inline(self, ident: str, text: str, staged: list[Staged]) -> Staged:
        content = self.blobs.stage(_decode_base64(text, ident, self.max_document_bytes), move=False)
        staged.append(content)
        return content

    @staticmethod
    def _check_stored(pairs, stored: dict[str, DocumentRow], errors: ErrorList) -> None:
        for de, content in pairs:
            row = stored.get(de.unique_id)
            if row is not None and row.hash.lower() != content.sha1:
                errors.add(f"DocumentEntry '{de.id}': a document with uniqueId {de.unique_id} is already stored "
                           f"here with hash {row.hash}, this one has hash {content.sha1}", de.unique_id,
                           E.NON_IDENTICAL_HASH)

    # --- metadata for the registry ------------------------------------------------------------
    def _fill_slots(self, de: DocumentEntry, content: _Content) -> None:
        given_hash = de.slot1("hash")
        # A hash that matched is kept exactly as sent (upper case included): it is the source's metadata.
        de.set_slot("hash", [given_hash.strip() if given_hash else content.sha1])
        de.set_slot("size", [str(content.size)])
        de.set_slot("repositoryUniqueId", [self.repository_id])
        to_element(de)  # into the request forwarded to the registry


# --- the checks of a request against its documents, before anything is stored ----------------
def read_documents(body: etree._Element, attachments: dict[etree._Element, mtom.Attachment],
                   stage_inline: Callable[[str, str], Staged]) -> dict[str, _Content]:
    """The request's xdsb:Documents by id; raises XdsException (XDSRepositoryError) for Documents that no
    entry could describe. attachments: the MTOM part of each xop:Include's parent; stage_inline turns an
    inline Document's base64 text into its Staged copy (or, offline, into its SHA-1 and size alone)."""
    contents: dict[str, _Content] = {}
    problems = ErrorList(E.REPOSITORY_ERROR)
    for el in body.iterchildren(DOCUMENT_TAG):
        ident = (el.get("id") or "").strip()
        if not ident:
            problems.add("an xdsb:Document has no id attribute, so no DocumentEntry can describe it", "Document")
            continue
        if ident in contents:
            problems.add(f"two xdsb:Document elements have id {ident}", ident)
            continue
        att = attachments.get(el)
        if att is not None:
            contents[ident] = _Content(ident, attachment=att)
        elif el.find(_XOP_INCLUDE) is not None:
            problems.add(f"Document {ident} holds an xop:Include but the request is not MTOM", ident)
        else:
            contents[ident] = _Content(ident, staged=stage_inline(ident, el.text or ""))
    problems.raise_if_errors()
    return contents


def digest_inline(ident: str, text: str, limit: int) -> Staged:
    """An inline Document's SHA-1 and size, as staging would find them, without keeping its bytes
    (`xds validate`): a Staged that names no stored copy."""
    sha1 = hashlib.sha1()
    size = 0
    for block in _decode_base64(text, ident, limit):
        sha1.update(block)
        size += len(block)
    return Staged("", size, sha1.hexdigest())


def check_documents(body: etree._Element, sub: Submission, contents: dict[str, _Content], *,
                    profile: str | None, lenient: bool, implied_references: bool, repository_id: str | None,
                    max_document_bytes: int) -> tuple[list[tuple[DocumentEntry, _Content]], ErrorList]:
    """Every problem of an ITI-41 that the request alone shows: its metadata, each Document against its
    entry (presence, hash, size) and, under the dmp profile, each CDA header against its metadata.
    repository_id None (offline): the repositoryUniqueId the source gives is not compared."""
    errors = ErrorList(E.REPOSITORY_METADATA_ERROR)
    # The validator's codes stay as they are: a Document Source reads them like a registry's.
    errors.items += validate_submission(sub, Mode.PROVIDE, profile, implied_references=implied_references).items
    pairs = _match(sub.document_entries, contents, errors)
    _check_unique_ids(pairs, errors)
    for de, content in pairs:
        _check_content(de, content, errors, repository_id)
    if profile == "dmp":
        # PROFILE.md B-24, B-30, B-31: each CDA against its metadata, before anything is stored.
        for de, content in pairs:
            _check_cda(de, content, body, errors, lenient, max_document_bytes)
    return pairs, errors


def _match(entries: list[DocumentEntry], contents: dict[str, _Content],
           errors: ErrorList) -> list[tuple[DocumentEntry, _Content]]:
    stable = {de.id: de for de in entries if de.object_type == C.OBJECT_TYPE_STABLE}
    pairs = []
    for de_id, de in stable.items():
        content = contents.get(de_id)
        if content is None:
            errors.add(f"{_label(de)} has no xdsb:Document with "
                       f"id {de_id} in the request", de_id, E.MISSING_DOCUMENT)
        else:
            pairs.append((de, content))
    for ident in contents:
        if ident not in stable:
            errors.add(f"xdsb:Document '{ident}' has no stable DocumentEntry with id {ident} in the metadata",
                       ident, E.MISSING_DOCUMENT_METADATA)
    return pairs


def _check_unique_ids(pairs, errors: ErrorList) -> None:
    if any(e.code == E.REPOSITORY_DUPLICATE_UNIQUE_ID_IN_MESSAGE for e in errors.items):
        return  # the validator has said it already
    seen: dict[str, str] = {}
    for de, _ in pairs:
        uid = de.unique_id
        if uid and uid in seen:
            errors.add(f"DocumentEntries '{seen[uid]}' and '{de.id}' both have uniqueId {uid}", uid,
                       E.REPOSITORY_DUPLICATE_UNIQUE_ID_IN_MESSAGE)
        elif uid:
            seen[uid] = de.id


def _check_content(de: DocumentEntry, content: _Content, errors: ErrorList, repository_id: str | None) -> None:
    label = _label(de)
    given_size = de.slot1("size")
    if given_size is not None and given_size.strip().isdigit() and int(given_size) != content.size:
        errors.add(f"{label} has size {given_size.strip()} but its document is {content.size} bytes",
                   de.id, E.REPOSITORY_METADATA_ERROR)
    given_hash = de.slot1("hash")
    if given_hash is not None and given_hash.strip().lower() != content.sha1:
        errors.add(f"{label} has hash {given_hash.strip()} but its document's SHA-1 is {content.sha1}",
                   de.id, E.REPOSITORY_METADATA_ERROR)
    given_repo = de.slot1("repositoryUniqueId")
    if repository_id is not None and given_repo is not None and given_repo.strip() != repository_id:
        # ITI TF-2b 3.41.4.1.3: the repository adds or replaces repositoryUniqueId (Provide._fill_slots);
        # only hash and size are the source's word against the bytes.
        errors.warn(f"{label} has repositoryUniqueId {given_repo.strip()}; this repository is "
                    f"{repository_id} and registered the document under its own id", de.id,
                    E.REPOSITORY_METADATA_ERROR)


def _check_cda(de: DocumentEntry, content: _Content, body, errors: ErrorList, lenient: bool, limit: int) -> None:
    """The CDA header coherence checks of the dmp profile: errors, or warnings when lenient."""
    if not cda.wants_check(de, _document_bytes(content, body, cda.HEAD_BYTES, limit)):
        return
    if content.size > cda.MAX_BYTES:
        problems = cda.too_large(content.size)
    else:
        problems = cda.check(de, _document_bytes(content, body, cda.MAX_BYTES, limit))
    cda.report(errors, de, problems, lenient=lenient)


def _document_bytes(content: _Content, body, wanted: int, limit: int) -> bytes:
    """Up to wanted bytes of a document: its MTOM part, or its inline base64 decoded again (at most limit
    bytes long, the repository's max_document_bytes)."""
    if content.attachment is not None:
        with content.attachment.open() as f:
            return f.read(wanted)
    text = next((el.text or "" for el in body.iterchildren(DOCUMENT_TAG)
                 if (el.get("id") or "").strip() == content.id), "")
    out = bytearray()
    for block in _decode_base64(text, content.id, limit):
        out += block
        if len(out) >= wanted:
            break
    return bytes(out[:wanted])


def _decode_base64(text: str, ident: str, limit: int):
    """Decoded blocks of an inline Document, a slice at a time so a copy of the whole never exists."""
    pending = b""
    total = 0
    for i in range(0, len(text), _BASE64_STEP):
        try:
            data = pending + text[i:i + _BASE64_STEP].encode("ascii").translate(None, _WHITESPACE)
        except UnicodeEncodeError:
            raise XdsException(E.REPOSITORY_ERROR, f"Document {ident} holds text that is not base64", ident) from None
        cut = len(data) - len(data) % 4
        pending = data[cut:]
        if cut:
            block = _a2b(data[:cut], ident)
            total += len(block)
            if total > limit:
                raise XdsException(E.REPOSITORY_ERROR, f"Document {ident} is larger than the limit of {limit} "
                                   "bytes", ident)
            yield block
    if pending:
        raise XdsException(E.REPOSITORY_ERROR, f"Document {ident} is not valid base64: its length is not a "
                           "multiple of 4", ident)


def _a2b(data: bytes, ident: str) -> bytes:
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error as exc:
        raise XdsException(E.REPOSITORY_ERROR, f"Document {ident} is not valid base64: {exc}", ident) from None


def _label(de: DocumentEntry) -> str:
    """How messages name an entry: by the id the source sent, and its uniqueId when it has one."""
    return f"DocumentEntry '{de.id}'" + (f" (uniqueId {de.unique_id})" if de.unique_id else " (no uniqueId)")
