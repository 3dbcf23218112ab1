"""Per-deployment switches of the registry actor."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RegistryConfig:
    # Refuse submissions for patients the identity feed has not announced (XDSUnknownPatientId).
    check_patients: bool = True
    # Above this many objects a LeafClass query answers XDSTooManyResults.
    max_query_results: int = 1000
    # Keep extra `urn:` slots (XDSExtraMetadataNotSaved warning and dropped when off).
    keep_extra_metadata: bool = True
    # Profiles of extra validation rules applied after the IHE ones (e.g. "dmp").
    profiles: list[str] = field(default_factory=list)
