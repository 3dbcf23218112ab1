"""Per-deployment switches of the registry actor."""
from __future__ import annotations

from dataclasses import dataclass, field

from xds.security.callers import CallerRules
from xds.security.policy import Rules
from xds.validation import Profile, get_profile


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
    # A nested Classification / ExternalIdentifier without its parent reference belongs to its parent
    # (with a warning); off, ebRIM's required attribute is required.
    implied_references: bool = False
    # Accept ITI-42 only from repositories in the directory, identified by their TLS client
    # certificate subject, and only for their own repositoryUniqueIds.
    require_known_repositories: bool = False
    # Answer ITI-43 on the registry endpoint by forwarding to the repository hosts in the directory.
    route_retrieve: bool = True
    # Seconds to wait for a repository host when forwarding ITI-43.
    forward_timeout: float = 30.0
    # The access policy (xds/security/policy.py): the rule set, and who counts as administrator or patient.
    policy: Rules = field(default_factory=Rules)
    callers: CallerRules = field(default_factory=CallerRules)

    @property
    def rules(self) -> Profile:
        """The validation profile's rules beyond metadata checks: statuses, ITI-57 limits, patient id forms."""
        return get_profile(self.profile)
