"""`xds patient`: the ids it takes follow the profile, and patients are kept by CX.1 + CX.4."""
import os
import subprocess
import sys

import pytest

MATRIX = os.path.join(os.path.dirname(__file__), "fixtures", "policy", "habilitations-unofficial.toml")
INS = "207058575627097^^^&1.2.250.1.213.1.4.10&ISO"


def xds(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    return subprocess.run([sys.executable, "-m", "node.cli", "patient", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60)


@pytest.fixture
def dmp_config(tmp_path):
    path = tmp_path / "dmp.toml"
    path.write_text(f'profile = "dmp"\nhabilitation_matrix = "{MATRIX}"\ndata = "{tmp_path / "data"}"\n')
    return str(path)


def test_dmp_ins_with_nh_and_date_is_one_patient(tmp_path, dmp_config):
    for form in (INS + "^NH^^20100907", INS + "^NH", INS):
        done = xds(tmp_path, "--config", dmp_config, "add", form)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"added {form}"
    listed = xds(tmp_path, "--config", dmp_config, "list")
    assert listed.stdout.split() == [INS]


@pytest.mark.parametrize("bad,why", [(INS + "^PI", "CX.5 must be 'NH' or empty"),
                                     (INS + "^NH^^yesterday", "CX.7"),
                                     ("207058575627097", "CX.4")])
def test_dmp_refuses_other_forms_and_stores_nothing(tmp_path, dmp_config, bad, why):
    done = xds(tmp_path, "--config", dmp_config, "add", bad)
    assert done.returncode == 2 and why in done.stderr and "profile dmp" in done.stderr
    assert xds(tmp_path, "--config", dmp_config, "list").stdout.strip() == ""


def test_ihe_profile_keeps_the_plain_xds_form(tmp_path):
    data = str(tmp_path / "data")
    refused = xds(tmp_path, "--data", data, "add", INS + "^NH^^20100907")
    assert refused.returncode == 2 and "CX.7 must be empty" in refused.stderr
    assert xds(tmp_path, "--data", data, "add", INS).returncode == 0
    merged = xds(tmp_path, "--data", data, "merge", "1^^^&1.2.3&ISO^^^x", INS)
    assert merged.returncode == 2 and "CX.7 must be empty" in merged.stderr
    assert xds(tmp_path, "--data", data, "list").stdout.split() == [INS]
