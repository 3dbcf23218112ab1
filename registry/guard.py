"""The access policy for one registry request: xds.security.policy's decisions on the registry's data.

The pipeline's authorise layer makes one RegistryGuard per request (req.policy); every registry
transaction asks it, and none decides on its own:
- ITI-18: query_scope (refusals, then a Scope that the SQL applies); ITI-51: multi_patient_scope;
- ITI-42 / ITI-57 / ITI-62: hiding() (targets the caller cannot see are left out of the transaction's
  lookups, so they are answered exactly as unknown ones), check_feed, check_change, and origin() (the
  submitter recorded with what is registered);
- routed ITI-43: retrievable.
"""
from __future__ import annotations

import time
from typing import Iterable, Mapping



from xds import errors as E
from xds.errors import XdsException
from xds.security import policy as P
from xds.security.policy import Caller, Document, Rules, Visibility
from .access import states
from .query.scope import Scope
from .store import RegistryStore

REFUSAL_CODES = {P.DENIED: E.REGISTRY_ERROR, P.UNKNOWN_PATIENT: E.UNKNOWN_PATIENT_ID,
                 P.PATIENT_MISMATCH: E.PATIENT_ID_DOES_NOT_MATCH}


def refuse(decision: P.Decision, location: str = "") -> XdsException:
    code = REFUSAL_CODES.get(decision.refusal, E.REGISTRY_ERROR)
    text = decision.reason if decision.refusal != P.DENIED else f"access denied: {decision.reason}"
    return XdsException(code, text, location)


class RegistryGuard:
    def __init__(self, caller: Caller, rules: Rules, store: RegistryStore | None = None, now: float | None = None,
                 hidden_statuses: tuple[str, ...] = ()):
        """hidden_statuses: the profile's statuses whose documents nobody retrieves (the DMP's Deleted)."""
        self.caller = caller
        self.hidden_statuses = hidden_statuses
        self.store = store
        self.rules = rules
        self.now = time.time() if now is None else now
        self._states: dict[str, P.AccessState] = {}

    @property
    def admin(self) -> bool:
        return self.caller.kind == P.ADMIN

    # --- reading what the policy needs ----------------------------------------------------------
    def states(self, conn, patients: Iterable[str]) -> dict[str, P.AccessState]:
        wanted = [p for p in set(patients) if p and p not in self._states]
        if wanted:
            self._states.update(states(conn, wanted))
        return {p: self._states[p] for p in set(patients) if p}

    def state(self, conn, patient: str) -> P.AccessState:
        return self.states(conn, [patient])[patient]

    def facts(self, conn, ids: Iterable[str]) -> dict[str, Document]:
        """The policy's view of registry objects, by id."""
        return self.store.policy_facts(conn, ids)

    # --- ITI-18 ------------------------------------------------------------------------------------
    def query_scope(self, conn, named_patient: str | None, patients_of_ids, leaf_class: bool) -> Scope:
        """named_patient: the patient a Find* query or GetAll names; patients_of_ids: a callable giving the
        patients of the objects a by-id query names (called only when the rules need them)."""
        if self.admin or not self.rules.dmp:
            return Scope(None, int(self.now))
        if named_patient is not None:
            state = self.state(conn, named_patient)
            decision = P.may_query(self.rules, self.caller, state, leaf_class)
            if not decision:
                raise refuse(decision, "AdhocQuery")
            return Scope({named_patient: self._visibility(state, leaf_class)}, int(self.now))
        by_patient: dict[str, Visibility] = {}
        for p, state in self.states(conn, patients_of_ids()).items():
            # A by-id query names objects, not a patient: an unknown or closed record, or another patient
            # than the token's, hides them instead, so that the answer does not tell whose they are.
            decision = P.may_query(self.rules, self.caller, state, leaf_class)
            if decision:
                by_patient[p] = self._visibility(state, leaf_class)
            elif decision.refusal == P.DENIED:
                raise refuse(decision, "AdhocQuery")  # about the caller (C-8, C-15), not the objects
        return Scope(by_patient, int(self.now))

    # --- ITI-51 -------------------------------------------------------------------------------------
    def multi_patient_scope(self, conn, patients: list[str] | None, leaf_class: bool) -> Scope:
        """patients: the list an ITI-51 query names, or None when it names none (every patient). Each named
        patient gets ITI-18's decision for that patient; without a list only an administrator may ask."""
        if patients is None:
            if not self.admin:
                raise XdsException(E.REGISTRY_ERROR, "access denied: a Multi-Patient Stored Query without a "
                                   "patient list asks about every patient and is allowed only to an "
                                   "administrator; name the patients", "AdhocQuery")
            return Scope(None, int(self.now))
        if self.admin or not self.rules.dmp:
            return Scope(None, int(self.now))
        by_patient: dict[str, Visibility] = {}
        for p in sorted(set(patients)):
            state = self.state(conn, p)
            decision = P.may_query(self.rules, self.caller, state, leaf_class)
            if not decision:
                raise refuse(decision, "AdhocQuery")
            by_patient[p] = self._visibility(state, leaf_class)
        return Scope(by_patient, int(self.now))

    def _visibility(self, state: P.AccessState, leaf_class: bool) -> Visibility:
        return P.visibility(self.rules, self.caller, state, P.READ if leaf_class else P.LOCATE, self.now)

    # --- ITI-43 through the registry -----------------------------------------------------------------
    def retrievable(self, conn, unique_ids: Iterable[str]) -> set[str]:
        """Of these document uniqueIds, those the caller may retrieve; the others are answered as unknown."""
        uids = sorted(set(unique_ids))
        if self.hidden_statuses and uids:
            gone = self.store.documents_in_status(conn, uids, self.hidden_statuses)
            uids = [u for u in uids if u not in gone]
        if self.admin or not self.rules.dmp:
            return set(uids)
        latest = self.store.newest_documents(conn, uids)  # the newest version's metadata decides
        facts = self.facts(conn, latest.values())
        states_ = self.states(conn, {f.patient for f in facts.values()})
        out = set()
        for uid, oid in latest.items():
            doc = facts[oid]
            decision = P.may_retrieve(self.rules, self.caller, states_[doc.patient], doc, self.now)
            if decision:
                out.add(uid)
            elif decision.refusal == P.DENIED:
                raise refuse(decision, uid)
        return out

    # --- ITI-42, ITI-57, ITI-62 ------------------------------------------------------------------------
    def origin(self) -> tuple[str | None, str | None]:
        """The submitter recorded with new objects: (organisation, person)."""
        return self.caller.organisation, self.caller.person

    def check_feed(self, conn, patient_ids: Iterable[str], location: str = "") -> None:
        if self.admin or not self.rules.dmp:
            return
        for p, state in sorted(self.states(conn, patient_ids).items()):
            decision = P.may_feed(self.rules, self.caller, state)
            if not decision:
                raise refuse(decision, location)

    def hidden(self, conn, ids: Iterable[str]) -> set[str]:
        """Of these ids (objects, logical ids, associations), those the caller may not see: a change aimed
        at one gets the answer an unknown target gets. An association is hidden with either of its ends."""
        if self.admin or not self.rules.dmp:
            return set()
        ids = set(i for i in ids if i)
        rows = {i: (i, lid) for i, lid in self.store.ids_and_lids(conn, ids).items()}
        ends = self.store.association_ends(conn, ids)
        facts = self.facts(conn, set(rows) | {e for pair in ends.values() for e in pair})
        states_ = self.states(conn, {f.patient for f in facts.values()})
        unseen = set()
        for oid, doc in facts.items():
            if not P.sees_at_all(self.rules, self.caller, states_[doc.patient], doc, self.now):
                unseen.add(oid)
        out = set()
        for oid in unseen & set(rows):
            out |= set(rows[oid])
        out |= {aid for aid, pair in ends.items() if set(pair) & unseen}
        return out

    def hiding(self, store: RegistryStore, conn, named: Iterable[str]) -> RegistryStore:
        """The store as this caller's transaction sees it: the hidden ones among the named ids are absent."""
        hidden = self.hidden(conn, named)
        return _HidingStore(store, hidden) if hidden else store

    def check_change(self, conn, ids: Iterable[str], op: str | Mapping[str, str],
                     location: Mapping[str, str] | None = None) -> None:
        """Refuse (XDSRegistryError, or the gate's own code) unless the caller may change every object.
        op: one operation for all, or one per id."""
        ids = sorted(set(ids))
        if self.admin or not ids:
            return
        facts = self.facts(conn, ids)
        states_ = self.states(conn, {f.patient for f in facts.values()})
        for oid in ids:
            doc = facts.get(oid)
            if doc is None:
                continue  # not registered: the transaction's own checks answer for it
            what = op if isinstance(op, str) else op[oid]
            decision = P.may_change(self.rules, self.caller, states_[doc.patient], doc, what, self.now)
            if not decision:
                raise refuse(decision, (location or {}).get(oid, oid))


class _HidingStore:
    """A RegistryStore whose lookups of existing objects leave some ids out."""

    def __init__(self, store: RegistryStore, hidden: set[str]):
        self._store, self._hidden = store, hidden

    def __getattr__(self, name):
        return getattr(self._store, name)

    def objects(self, conn, ids, share_lock: bool = False):
        return self._store.objects(conn, [i for i in ids if i not in self._hidden], share_lock)

    def latest_versions(self, conn, lids):
        return self._store.latest_versions(conn, [i for i in lids if i not in self._hidden])

    def associations(self, conn, ids, share_lock: bool = False):
        return self._store.associations(conn, [i for i in ids if i not in self._hidden], share_lock)

    def lock_for_removal(self, conn, ids):
        return self._store.lock_for_removal(conn, [i for i in ids if i not in self._hidden])

    def lock_and_prefetch(self, conn, unique_ids, patient_id, ids):
        return self._store.lock_and_prefetch(conn, unique_ids, patient_id, [i for i in ids if i not in self._hidden])


def admin_guard() -> RegistryGuard:
    """For calls from inside the server (and tests of the transactions alone): the administrator."""
    return RegistryGuard(Caller(P.ADMIN), Rules())


def named_ids(sub) -> set[str]:
    """The registered objects a submission (ITI-42, ITI-57) may name: association ends, ObjectRefs and the
    logical ids of new versions."""
    out = set(sub.object_refs)
    for a in sub.associations:
        out |= {a.source, a.target}
    out |= {o.lid for o in sub.objects if getattr(o, "lid", None)}
    return out
