"""ITI-86 Remove Documents: delete documents, bytes and record, from this repository.

Each DocumentRequest stands on its own: the documents found are removed even when others of
the same request are not, and the answer is then PartialSuccess. The registry is not told;
a Document Administrator removes the metadata with ITI-62 first (IHE RMD).
"""
from __future__ import annotations

import logging

from lxml import etree

from xds import constants as C
from xds import errors as E
from xds.ebrim import registry_response, status_for
from xds.errors import XdsError
from .blobs import BlobStore
from xds.xdsb import not_held, read_requests
from .store import DocumentRow, RepositoryStore

log = logging.getLogger(__name__)

REQUEST_TAG = C.q(C.NS_RMD, "RemoveDocumentsRequest")


def remove_documents(body: etree._Element, store: RepositoryStore, blobs: BlobStore,
                     repository_id: str) -> etree._Element:
    """The RegistryResponse answering one RemoveDocumentsRequest."""
    items = read_requests(body, REQUEST_TAG)
    mine = list(dict.fromkeys(uid for _, repo, uid in items if repo == repository_id))

    def delete_files(rows: list[DocumentRow]) -> None:
        for row in rows:
            blobs.delete(row.location)

    removed = {row.unique_id for row in store.remove(mine, delete_files)}
    errors: list[XdsError] = []
    for _, repo, uid in items:
        if repo != repository_id:
            errors.append(XdsError(E.UNKNOWN_REPOSITORY_ID, f"RepositoryUniqueId {repo} (asked to remove document "
                                   f"{uid}) is not this repository, which is {repository_id}", repo))
        elif uid not in removed:
            errors.append(not_held(uid, repository_id))
    if removed:
        log.info("ITI-86 removed %d documents", len(removed))
    status = status_for(errors, partial=bool(removed))
    return registry_response(errors, status)
