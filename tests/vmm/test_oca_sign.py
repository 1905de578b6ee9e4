"""`hv psp oca-sign`: the platform owner's CA signs the PSP's PEK request, and the PSP takes it.

pek-csr -> oca-sign -> import -> status shows the platform owned externally -> the exported chain
verifies with the owner's OCA; and every refusal is one line, status 2 (3 for the PSP's own), with
`{"ok": false}` on stdout under --json."""

import json
import shutil

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import sevwire
from hv.cli import main


@pytest.fixture
def hv(psp_state, tmp_path):
    state = tmp_path / "psp.json"
    shutil.copy(psp_state, state)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [*map(str, args)], env={"HV_PSP_STATE": str(state)})
    return invoke


def test_round_trip_makes_the_platform_externally_owned(hv, tmp_path):
    csr, key, out, certs = tmp_path / "pek.csr", tmp_path / "oca.pem", tmp_path / "signed", tmp_path / "certs"
    assert hv("psp", "pek-csr", "-o", csr).exit_code == 0
    r = hv("psp", "oca-sign", csr, "--oca-key", key, "--new-key", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["new_key"] is True
    assert key.stat().st_mode & 0o777 == 0o600
    oca_key = serialization.load_pem_private_key(key.read_bytes(), password=None)

    # Independently of hv: the OCA certifies its own key, and signed the CSR's body in slot 1.
    oca = sevwire.SevCert.decode((out / "oca.cert").read_bytes())
    pek = sevwire.SevCert.decode((out / "pek.cert").read_bytes())
    assert oca.pubkey_usage == sevwire.Usage.OCA
    assert oca.public_key().public_numbers() == oca_key.public_key().public_numbers()
    assert sevwire.verify_sev_cert(oca, oca_key.public_key(), sevwire.Usage.OCA) == 1
    assert sevwire.verify_sev_cert(pek, oca_key.public_key(), sevwire.Usage.OCA) == 1
    assert pek.signed_bytes() == sevwire.SevCert.decode(csr.read_bytes()).signed_bytes()

    r = hv("psp", "import", out / "pek.cert", out / "oca.cert")
    assert r.exit_code == 0, r.output
    status = json.loads(hv("psp", "status", "--json").stdout)
    assert status["owner"] == "external"
    assert hv("psp", "export", "-o", certs).exit_code == 0
    assert (certs / "oca.cert").read_bytes() == (out / "oca.cert").read_bytes()
    r = hv("owner", "verify-chain", certs, "--json")
    assert r.exit_code == 0, r.output
    links = {link["link"]: link["ok"] for link in json.loads(r.stdout)["links"]}
    assert links["OCA -> PEK"] and links["CEK -> PEK"] and links["PEK -> PDH"] and all(links.values())


def test_an_existing_key_signs_and_is_never_replaced(hv, tmp_path):
    csr, key = tmp_path / "pek.csr", tmp_path / "oca.pem"
    assert hv("psp", "pek-csr", "-o", csr).exit_code == 0
    oca_key = ec.generate_private_key(ec.SECP384R1())
    pem = oca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())  # as `openssl ecparam -genkey` writes it
    key.write_bytes(pem)
    r = hv("psp", "oca-sign", csr, "--oca-key", key, "--new-key", "-o", tmp_path / "x")
    assert r.exit_code == 2 and "never replaces a key" in r.stderr and key.read_bytes() == pem
    r = hv("psp", "oca-sign", csr, "--oca-key", key, "-o", tmp_path / "signed")
    assert r.exit_code == 0, r.output
    pek = sevwire.SevCert.decode((tmp_path / "signed" / "pek.cert").read_bytes())
    assert sevwire.verify_sev_cert(pek, oca_key.public_key(), sevwire.Usage.OCA) == 1


@pytest.mark.parametrize("what", ["no-key", "p256-key", "not-a-key", "signed-csr", "pdh-not-pek", "short-csr"])
def test_bad_inputs_are_one_line_and_status_2(hv, tmp_path, what):
    csr, key = tmp_path / "pek.csr", tmp_path / "oca.pem"
    assert hv("psp", "pek-csr", "-o", csr).exit_code == 0
    good = ec.generate_private_key(ec.SECP384R1())
    key.write_bytes(good.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    if what == "no-key":
        key.unlink()
    elif what == "p256-key":
        key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    elif what == "not-a-key":
        key.write_text("hello")
    elif what == "signed-csr":
        signed = sevwire.sign_sev_cert(sevwire.SevCert.decode(csr.read_bytes()), good, sevwire.Usage.OCA)
        csr.write_bytes(signed.encode())
    elif what == "pdh-not-pek":
        assert hv("psp", "export", "-o", tmp_path / "certs").exit_code == 0
        csr = tmp_path / "certs" / "pdh.cert"
    elif what == "short-csr":
        csr.write_bytes(csr.read_bytes()[:100])
    r = hv("psp", "oca-sign", csr, "--oca-key", key, "-o", tmp_path / "out", "--json")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hv psp: "), r.stderr
    assert json.loads(r.stdout) == {"ok": False, "error": lines[0].removeprefix("hv psp: ")}
    assert not (tmp_path / "out").exists()


def test_a_failed_import_prints_json_on_stdout(hv, tmp_path):
    """Scenario: `hv psp import --json` printed nothing on stdout when the PSP refused."""
    csr, out = tmp_path / "pek.csr", tmp_path / "signed"
    assert hv("psp", "pek-csr", "-o", csr).exit_code == 0
    assert hv("psp", "oca-sign", csr, "--oca-key", tmp_path / "oca.pem", "--new-key", "-o", out).exit_code == 0
    assert hv("psp", "import", out / "pek.cert", out / "oca.cert").exit_code == 0
    r = hv("psp", "import", out / "pek.cert", out / "oca.cert", "--json")
    assert r.exit_code == 3
    answer = json.loads(r.stdout)
    assert answer["ok"] is False and "ALREADY_OWNED" in answer["error"]
    assert r.stderr.strip() == f"hv psp: {answer['error']}"
