"""`hv psp export` writes the SNP chain as AMD's key server serves it, and OpenSSL, an
implementation nobody here wrote, is the judge: `openssl verify -CAfile cert_chain.pem vcek.pem`
passes for the platform's own VCEK and fails for another platform's."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from click.testing import CliRunner
from cryptography import x509

import sevwire
from hv.cli import main
from hv.hw.machine import Machine, MachineConfig

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")


@pytest.fixture(scope="module")
def other_state(tmp_path_factory):
    """A second platform: its own chip, so its own ARK, ASK and VCEK."""
    path = tmp_path_factory.mktemp("other-psp") / "psp-state.json"
    Machine(MachineConfig(dram_size=4 << 20, psp_state=str(path))).psp_firmware  # noqa: B018
    return path


def _export(state, out):
    r = CliRunner().invoke(main, ["psp", "export", "-o", str(out), "--psp-state", str(state)])
    assert r.exit_code == 0, r.output
    return out


def _openssl_verify(*args) -> subprocess.CompletedProcess:
    return subprocess.run([OPENSSL, "verify", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def exports(psp_state, other_state, tmp_path):
    mine, theirs = tmp_path / "mine.json", tmp_path / "theirs.json"
    shutil.copy(psp_state, mine)
    shutil.copy(other_state, theirs)
    return _export(mine, tmp_path / "mine"), _export(theirs, tmp_path / "theirs")


@needs_openssl
def test_openssl_verifies_the_exported_vcek_and_refuses_another_platforms(exports):
    mine, theirs = exports
    r = _openssl_verify("-CAfile", mine / "cert_chain.pem", mine / "vcek.pem")
    assert r.returncode == 0 and r.stdout.strip().endswith("vcek.pem: OK"), r.stdout + r.stderr
    r = _openssl_verify("-CAfile", mine / "ark.pem", "-untrusted", mine / "ask.pem", mine / "vcek.pem")
    assert r.returncode == 0, r.stdout + r.stderr
    r = _openssl_verify("-CAfile", theirs / "cert_chain.pem", theirs / "vcek.pem")
    assert r.returncode == 0, r.stdout + r.stderr
    # Another platform's VCEK names the same issuer, but its signature is another ASK's.
    r = _openssl_verify("-CAfile", mine / "cert_chain.pem", theirs / "vcek.pem")
    assert r.returncode != 0 and "signature failure" in r.stdout + r.stderr, r.stdout + r.stderr
    # ... and an ASK is not trusted on its own: without its ARK the chain is incomplete.
    r = _openssl_verify("-CAfile", theirs / "ark.pem", "-untrusted", mine / "ask.pem", mine / "vcek.pem")
    assert r.returncode != 0, r.stdout + r.stderr


def test_pem_files_hold_the_same_keys_and_certificates_as_the_amd_format(exports):
    mine, _theirs = exports
    ask_pem, ark_pem = (mine / "ask.pem").read_bytes(), (mine / "ark.pem").read_bytes()
    assert (mine / "cert_chain.pem").read_bytes() == ask_pem + ark_pem  # the KDS's order
    for pem, amd in ((ark_pem, "ark.cert"), (ask_pem, "ask.cert")):
        key = x509.load_pem_x509_certificate(pem).public_key()
        amd_key = sevwire.AmdCert.decode((mine / amd).read_bytes()).public_key()
        assert key.public_numbers() == amd_key.public_numbers(), amd
    vcek = x509.load_pem_x509_certificate((mine / "vcek.pem").read_bytes())
    assert vcek == x509.load_der_x509_certificate((mine / "vcek.der").read_bytes())
