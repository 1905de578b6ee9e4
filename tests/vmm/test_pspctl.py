"""The platform owner's commands (sevctl-like) through /dev/sev, with the state file as the PSP's
non-volatile storage: what one command changes is there for the next."""

import json
import shutil

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

import sevwire
from hv.cli import main


@pytest.fixture
def psp(psp_state, tmp_path):
    state = tmp_path / "psp.json"
    shutil.copy(psp_state, state)  # this test's own platform, born from the session's identity
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, ["psp", *map(str, args), "--psp-state", str(state)])
    return invoke


def status(psp):
    r = psp("status", "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_status_reports_an_initialised_self_owned_platform(psp):
    st = status(psp)
    assert st["state"] in ("INIT", "WORKING") and st["owner"] == "self" and st["es_initialized"]
    assert (st["api_major"], st["api_minor"]) >= (0, 17)


def test_take_ownership_with_an_external_oca_then_reset(psp, tmp_path):
    csr = tmp_path / "pek.csr"
    assert psp("pek-csr", "-o", csr).exit_code == 0
    pek = sevwire.SevCert.decode(csr.read_bytes())
    assert pek.pubkey_usage == sevwire.Usage.PEK
    # The platform owner's OCA, self-signed, signs the PEK request (slot 1).
    oca_key = ec.generate_private_key(ec.SECP384R1())
    oca = sevwire.sign_sev_cert(sevwire.SevCert.from_public_key(oca_key.public_key(), sevwire.Usage.OCA),
                                oca_key, sevwire.Usage.OCA)
    signed = sevwire.sign_sev_cert(pek, oca_key, sevwire.Usage.OCA, slot=1)
    (tmp_path / "pek.cert").write_bytes(signed.encode())
    (tmp_path / "oca.cert").write_bytes(oca.encode())
    r = psp("import", tmp_path / "pek.cert", tmp_path / "oca.cert")
    assert r.exit_code == 0, r.output
    assert status(psp)["owner"] == "external"
    # The exported chain now names the imported OCA, and it still verifies end to end.
    out = tmp_path / "certs"
    assert psp("export", "-o", out).exit_code == 0
    assert (out / "oca.cert").read_bytes() == oca.encode()
    r = CliRunner().invoke(main, ["owner", "verify-chain", str(out)])
    assert r.exit_code == 0 and "FAIL" not in r.output, r.output
    assert psp("reset").exit_code == 0
    assert status(psp)["owner"] == "self"


def test_import_of_a_pek_the_oca_did_not_sign_is_refused(psp, tmp_path):
    csr = tmp_path / "pek.csr"
    assert psp("pek-csr", "-o", csr).exit_code == 0
    oca_key, other = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    oca = sevwire.sign_sev_cert(sevwire.SevCert.from_public_key(oca_key.public_key(), sevwire.Usage.OCA),
                                oca_key, sevwire.Usage.OCA)
    signed = sevwire.sign_sev_cert(sevwire.SevCert.decode(csr.read_bytes()), other, sevwire.Usage.OCA, slot=1)
    (tmp_path / "pek.cert").write_bytes(signed.encode())
    (tmp_path / "oca.cert").write_bytes(oca.encode())
    r = psp("import", tmp_path / "pek.cert", tmp_path / "oca.cert")
    assert r.exit_code == 3
    assert "PEK_CERT_IMPORT failed: firmware error" in r.output
    assert status(psp)["owner"] == "self"


def test_rotate_makes_a_new_pdh_that_persists(psp, tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    assert psp("export", "-o", a).exit_code == 0
    r = psp("rotate", "--json")
    assert r.exit_code == 0
    assert psp("export", "-o", b).exit_code == 0
    assert (a / "pdh.cert").read_bytes() != (b / "pdh.cert").read_bytes()
    assert json.loads(r.output)["pdh_sha256"]
    assert (a / "cek.cert").read_bytes() == (b / "cek.cert").read_bytes()  # the chip is the same
