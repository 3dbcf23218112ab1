"""Per-deployment switches of the registry actor."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RegistryConfig:
    # Refuse submissions for patients the identity feed has not announced (XDSUnknownPatientId).
    check_patients: bool = True
    # Above this many objects a LeafClass query answers XDSTooManyResults.
    max_query_results: int = 1000
    # Keep extra `urn:` slots (XDSExtraMetadataNotSaved warning and dropped when off).
    keep_extra_metadata: bool = True
    # Validation profile: "ihe" (the IHE rules alone) or a national one such as "dmp".
    profile: str = "ihe"
