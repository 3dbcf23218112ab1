"""The access policy's start-up rules: profile dmp needs a habilitation matrix and the VIHF, and the matrix
file is checked before anything is served."""
from __future__ import annotations

import os

import pytest

from node.server import Services, policy_rules
from xds import settings as settings_mod
from xds.security.matrix import load_matrix, parse_matrix
from xds.security.policy import Matrix

MATRIX = os.path.join(os.path.dirname(__file__), "fixtures", "policy", "habilitations-unofficial.toml")


def test_profile_dmp_without_a_matrix_refuses_to_start(tmp_path):
    with pytest.raises(ValueError, match="habilitation_matrix"):
        settings_mod.load(overrides={"profile": "dmp", "data": str(tmp_path)}, env={})
    s = settings_mod.load(overrides={"profile": "dmp", "data": str(tmp_path), "habilitation_matrix": MATRIX}, env={})
    assert s.profile == "dmp"


def test_profile_dmp_with_xua_refuses_to_start(tmp_path):
    with pytest.raises(ValueError, match="VIHF"):
        settings_mod.load(overrides={"profile": "dmp", "security": "xua", "xua_trust": ["x.pem"],
                                     "habilitation_matrix": MATRIX, "data": str(tmp_path)}, env={})


def test_a_repository_host_needs_no_matrix(tmp_path):
    s = settings_mod.load(overrides={"profile": "dmp", "role": "repository", "registry_url": "http://r/xds/registry",
                                     "data": str(tmp_path)}, env={})
    assert s.habilitation_matrix is None


def test_the_dmp_rules_need_dmp_and_vihf(tmp_path):
    base = settings_mod.Settings(data=str(tmp_path), habilitation_matrix=MATRIX)
    assert not policy_rules(base).dmp
    base.profile = "dmp"
    assert not policy_rules(base).dmp  # security none: metadata-only
    base.security = "vihf"
    rules = policy_rules(base)
    assert rules.dmp and rules.check_resource_id and rules.matrix.types_for("10") is None
    assert rules.matrix.types_for("99") is False and not rules.matrix.official


def test_a_broken_matrix_file_stops_the_server(tmp_path):
    bad = tmp_path / "m.toml"
    bad.write_text('[profession."10"]\ntypes = ["11490-0"]\n')
    s = settings_mod.Settings(data=str(tmp_path / "d"), profile="dmp", habilitation_matrix=str(bad))
    with pytest.raises(ValueError, match="code\\^\\^codingScheme"):
        Services(s)
    with pytest.raises(ValueError, match="no such file|No such file"):
        load_matrix(str(tmp_path / "absent.toml"))


@pytest.mark.parametrize("data,words", [
    ({}, "no profession"),
    ({"profession": {"10": {"types": ["*", "a^^b"]}}}, "stands alone"),
    ({"profession": {"10": {}}}, "needs types"),
    ({"profession": {"10": {"types": "a^^b"}}}, "list of strings"),
    ({"official": "yes", "profession": {"10": {"types": ["*"]}}}, "true or false"),
    ({"rows": {}}, "unknown keys"),
])
def test_matrix_mistakes_are_named(data, words):
    with pytest.raises(ValueError, match=words):
        parse_matrix(data)


def test_the_shipped_test_matrix_is_marked_unofficial():
    m = load_matrix(MATRIX)
    assert isinstance(m, Matrix) and m.official is False
    assert m.types_for("60") == frozenset({"11490-0^^2.16.840.1.113883.6.1", "34133-9^^2.16.840.1.113883.6.1"})
