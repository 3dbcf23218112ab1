"""The cached FindDocuments statement takes the access policy's conditions as named bind parameters:
scope_values must give exactly the ones de_condition binds, for every shape of Visibility."""
from __future__ import annotations

import itertools

from registry.query import scope as SC
from xds.security.policy import Visibility


def _binds(vis: Visibility) -> set[str]:
    return set(SC.de_condition(vis, 1000, v=SC.Values(bind=True)).compile().params)


def test_scope_values_name_every_bind_parameter_and_no_other():
    flags = list(itertools.product((False, True), repeat=4))
    for own_only, masked, inv_p, inv_rl in flags:
        for types in (None, frozenset(), frozenset({"A^^1", "B^^1"})):
            for org, person in (("ORG", "PS"), (None, "PS"), ("ORG", None), (None, None)):
                vis = Visibility(own_only=own_only, hide_masked=masked, hide_patient_invisible=inv_p,
                                 hide_rl_invisible=inv_rl, types=types, organisation=org, person=person)
                assert set(SC.scope_values(vis, 1000)) == _binds(vis), vis
    assert SC.scope_values(Visibility(everything=True), 1) == {}
    assert SC.scope_values(Visibility(nothing=True), 1) == {}
