"""The audit records a conformance run left, checked against the DICOM audit message schema
(`--atna-schema dicom2024d.xsd` of `python -m conformance.ci`): every record of every transaction and
outcome the NIST kit provoked, refusals included, rendered as the audit repository receives it."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from lxml import etree

from xds.audit import records as R


@dataclass
class AtnaCheck:
    records: int = 0
    kinds: Counter = field(default_factory=Counter)
    invalid: list[str] = field(default_factory=list)

    def add(self, other: "AtnaCheck") -> None:
        self.records += other.records
        self.kinds.update(other.kinds)
        self.invalid += other.invalid

    def line(self, schema: str) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))
        verdict = "all valid" if not self.invalid else f"{len(self.invalid)} INVALID"
        return f"ATNA: {self.records} audit records ({kinds}); {verdict} against {schema}"


def check_outbox(store, source, schema: etree.XMLSchema) -> AtnaCheck:
    out = AtnaCheck()
    after = 0
    while True:
        rows = store.records(after, 1000)
        if not rows:
            return out
        for seq, stored, _, _ in rows:
            event = R.from_stored(stored, seq)
            kind = event.transaction if isinstance(event, R.AuditEvent) else event.kind
            outcome = "ok" if event.outcome == 0 else "failure"
            out.records += 1
            out.kinds[f"{kind}/{outcome}"] += 1
            root = etree.fromstring(R.render(event, source.audit_source_id, source.enterprise_site_id))
            if not schema.validate(root):
                out.invalid.append(f"record {seq} ({kind}): {schema.error_log.last_error}")
            after = seq
