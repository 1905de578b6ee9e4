"""Debian's kernel under `hv run --kernel ... --sev-snp` asks for an attestation report from user
space: the initramfs's /init loads sev-guest.ko and runs the project's client (hv-report) on a
fresh 64-byte nonce from the command line (tools/linux.py); the report is checked with
`hv owner verify-report` against `hv psp export`'s chain and the measurement predicted from the
kernel, initrd and command line, as a guest owner would (docs/linux.md, "SEV-SNP")."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from cryptography import x509

from hv.vmm.initramfs import POWEROFF_PARAM
from sevwire import SNP_CERT_ARK_GUID, SNP_CERT_ASK_GUID, SNP_CERT_VCEK_GUID

pytestmark = [pytest.mark.linux, pytest.mark.slow]
BOOT_LIMIT = 300  # seconds; an SEV-SNP boot to power-off takes about 60 here
REPORT_PARAM = "hv.report"  # tools/linux.py's /init asks for a report over this nonce
REPORT_SIZE = 0x4A0


@pytest.fixture(scope="module")
def attested(hv_command, kernel_files, tmp_path_factory):
    """One SEV-SNP boot asking for a report; its console, nonce, command line, chain and env."""
    d = tmp_path_factory.mktemp("attest")
    env = dict(os.environ, HV_PSP_STATE=str(d / "psp-state.json"))
    nonce = os.urandom(64).hex()
    append = f"{REPORT_PARAM}={nonce} {POWEROFF_PARAM}"
    kernel, initrd = kernel_files
    proc = subprocess.run([*hv_command, "run", "--kernel", str(kernel), "--initrd", str(initrd),
                           "--sev-snp", "--append", append, "--timeout", str(BOOT_LIMIT)],
                          stdin=subprocess.DEVNULL, capture_output=True, env=env,
                          timeout=BOOT_LIMIT + 60)
    console = d / "console.txt"
    console.write_bytes(proc.stdout)
    chain = d / "chain"
    export = subprocess.run([*hv_command, "psp", "export", "-o", str(chain)], env=env,
                            capture_output=True)
    assert export.returncode == 0, export.stderr.decode()
    return {"status": proc.returncode, "stderr": proc.stderr.decode(), "console": console,
            "text": proc.stdout.decode("utf-8", "replace"), "nonce": nonce, "append": append,
            "chain": chain, "env": env, "dir": d, "files": kernel_files}


def _verify(hv_command, a, report, append=None, nonce=None):
    kernel, initrd = a["files"]
    return subprocess.run(
        [*hv_command, "owner", "verify-report", str(report), "--chain", str(a["chain"]),
         "--kernel", str(kernel), "--initrd", str(initrd),
         "--append", a["append"] if append is None else append,
         "--report-data", a["nonce"] if nonce is None else nonce],
        capture_output=True, env=a["env"], text=True)


def test_the_kernel_gets_a_report_through_dev_sev_guest(attested):
    a = attested
    text = a["text"]
    assert a["status"] == 0, a["stderr"] + text[-2000:]
    assert "Memory Encryption Features active: AMD SEV SEV-ES SEV-SNP" in text
    assert "SEV: SNP guest platform device initialized." in text
    assert "sev-guest sev-guest: Initialized SEV guest driver (using vmpck_id 0)" in text
    assert "hv-init: attestation\r\n" in text or "hv-init: attestation\n" in text
    assert "hv-init: attestation failed" not in text
    assert f"report_data: {a['nonce']}" in text
    assert len(re.findall(r"^report: [0-9a-f]+\r?$", text, re.M)) == 1  # SNP_GET_EXT_REPORT's
    # SNP_GET_REPORT's went first (the driver's message sequence numbers 1 and 2, then 3 and 4)
    assert f"SNP_GET_REPORT report_data: {a['nonce']}" in text
    assert len(re.findall(r"^SNP_GET_REPORT report: [0-9a-f]+\r?$", text, re.M)) == 1


def test_the_report_verifies_against_the_chain_and_the_predicted_measurement(hv_command, attested):
    """Scenario: the guest owner, from the files and the platform's exported chain alone."""
    r = _verify(hv_command, attested, attested["console"])
    assert r.returncode == 0, r.stdout + r.stderr
    for check in ("ARK -> ASK", "ASK -> VCEK", "VCEK -> report", "measurement", "report_data"):
        assert f"PASS  {check}" in r.stdout
    # SNP_GET_REPORT's report too, as hex in a file of its own
    plain = re.search(r"^SNP_GET_REPORT report: ([0-9a-f]+)\r?$", attested["text"], re.M).group(1)
    path = attested["dir"] / "plain-report.hex"
    path.write_text(plain)
    r = _verify(hv_command, attested, path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_flipped_byte_another_command_line_or_another_nonce_is_refused(hv_command, attested):
    a = attested
    hexed = re.search(r"^report: ([0-9a-f]+)\r?$", a["text"], re.M).group(1)
    report = bytearray.fromhex(hexed)
    assert len(report) == REPORT_SIZE
    report[0x90] ^= 0x01  # a byte of the measurement, in the signed range
    flipped = a["dir"] / "flipped.bin"
    flipped.write_bytes(bytes(report))
    r = _verify(hv_command, a, flipped)
    assert r.returncode == 1 and "REJECTED" in r.stderr and len(r.stderr.splitlines()) == 1
    r = _verify(hv_command, a, a["console"], append=f"{a['append']} quiet")
    assert r.returncode == 1 and "REJECTED at measurement" in r.stderr, r.stderr
    r = _verify(hv_command, a, a["console"], nonce=os.urandom(64).hex())
    assert r.returncode == 1 and "REJECTED" in r.stderr, r.stderr


def test_the_extended_report_carries_the_platforms_certificates(attested):
    """The certificate table of the extended request (VCEK, ASK, ARK by their GUIDs) holds the
    certificates `hv psp export` writes."""
    certs = dict(re.findall(r"^cert_data: ([0-9a-f-]+) ([0-9a-f]+)\r?$", attested["text"], re.M))
    chain = attested["chain"]
    assert bytes.fromhex(certs[SNP_CERT_VCEK_GUID]) == (chain / "vcek.der").read_bytes()
    for guid, name in ((SNP_CERT_ASK_GUID, "ask.pem"), (SNP_CERT_ARK_GUID, "ark.pem")):
        pem = x509.load_pem_x509_certificate((chain / name).read_bytes())
        assert x509.load_der_x509_certificate(bytes.fromhex(certs[guid])) == pem
