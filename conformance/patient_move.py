"""PatientMoveTransaction: ITI-64 Notify XAD-PID Link Change, an HL7 v2.5 ADT^A43 sent over MLLP to the
patient feed of the system under test, as the NIST toolkit's PatientMoveTransaction does.

The ids come from the step's UseReport values: PID-3 is $NewXADPID$ then $NewLocalPID$ (the local patient
id), MRG-1 is $OldXADPID$ then, for a merge, $OldLocalPID$ (the subsumed local id); PID-5 is the single
space the TF asks for. The step reports $patientid$ = the new XAD-PID, as the toolkit sets it.
"""
from __future__ import annotations

from datetime import datetime, timezone

from .context import EngineError
from .transactions import Exchange, send_hl7

NEW_XAD, OLD_XAD, NEW_LOCAL, OLD_LOCAL = "$NewXADPID$", "$OldXADPID$", "$NewLocalPID$", "$OldLocalPID$"


def ids_of(values: dict[str, str]) -> tuple[str, str, str, str | None]:
    """(new XAD-PID, local id, previous XAD-PID, subsumed local id or None) from the UseReport values."""
    missing = [name for name in (NEW_XAD, OLD_XAD, NEW_LOCAL) if not values.get(name)]
    if missing:
        raise EngineError(f"PatientMoveTransaction: no value for {', '.join(missing)} (its UseReport elements "
                          "name them)")
    return values[NEW_XAD], values[NEW_LOCAL], values[OLD_XAD], values.get(OLD_LOCAL) or None


def adt_a43(new_xad: str, local: str, previous_xad: str, subsumed: str | None = None,
            now: datetime | None = None, control_id: str | None = None) -> str:
    """The ADT^A43 of ITI TF-2b 3.64.4.1.2: MSH, EVN, PID (new XAD-PID~local id, name " "), MRG."""
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%d%H%M%S")
    control_id = control_id or f"A43{now.strftime('%H%M%S%f')}"
    mrg = previous_xad + (f"~{subsumed}" if subsumed else "")
    segments = [
        f"MSH|^~\\&|XDSCONFORMANCE|HARNESS|XDSREGISTRY|SUT|{stamp}||ADT^A43^ADT_A43|{control_id}|P|2.5",
        f"EVN|A43|{stamp}",
        f"PID|||{new_xad}~{local}|| ",
        f"MRG|{mrg}",
    ]
    return "\r".join(segments) + "\r"


def send_move(host: str, port: int, values: dict[str, str], timeout: float) -> Exchange:
    new_xad, local, previous, subsumed = ids_of(values)
    return send_hl7(host, port, adt_a43(new_xad, local, previous, subsumed), timeout)
