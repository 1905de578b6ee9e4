"""SNP attestation: SNP_GUEST_REQUEST with MSG_REPORT_REQ, the VCEK-signed 1184-byte report, and
the owner's offline `hv owner verify-report`.

The guest side is played by the test with the VMPCK0 of the guest's secrets page (read from the
PSP's guest context, which holds the same key): it seals a request binding a nonce of its own,
the hypervisor carries it through SNP_GUEST_REQUEST, and only the VMPCK opens the response.
"""

from __future__ import annotations

import os
import shutil

import pytest
from click.testing import CliRunner

from hv.cli import main
from hv.kvm.sev_snp import SnpGuest
from sevwire import (
    SNP_POLICY_DEFAULT,
    SNP_REPORT_SIZE,
    MsgReportReq,
    MsgReportRsp,
    MsgType,
    SnpPageType,
    Status,
    open_guest_message,
    seal_guest_message,
    snp_extend,
)

PAGE_A = bytes(range(256)) * 16


@pytest.fixture
def attest(psp_state, tmp_path, new_snp_vm):
    """A running SNP guest (one NORMAL page, one SECRETS page) and its exported chain."""
    state = tmp_path / "psp-state.json"
    shutil.copy(psp_state, state)
    machine, vm, dev = new_snp_vm(str(state))
    vm.write_gpa(0x1000, PAGE_A)
    guest = SnpGuest(vm, dev)
    guest.launch_start()
    guest.launch_update(0x1000)
    guest.launch_update(0x2000, SnpPageType.SECRETS)
    guest.launch_finish(host_data=b"\x11" * 32)
    vmpck = machine.psp_firmware._ctx.snp_guests[guest.gctx].vmpck[0]
    chain = tmp_path / "certs"
    r = CliRunner().invoke(main, ["psp", "export", "-o", str(chain), "--psp-state", str(state)])
    assert r.exit_code == 0, r.output
    return guest, vmpck, chain


def _expected_measurement() -> bytes:
    ld = snp_extend(bytes(48), PAGE_A, SnpPageType.NORMAL, 0x1000)
    return snp_extend(ld, b"", SnpPageType.SECRETS, 0x2000)


def _request(guest, vmpck, seqno, nonce):
    status, page = guest.guest_request(
        seal_guest_message(vmpck, seqno, MsgType.MSG_REPORT_REQ, MsgReportReq(nonce).encode()))
    return status, page


def _report(guest, vmpck, seqno, nonce) -> bytes:
    status, page = _request(guest, vmpck, seqno, nonce)
    assert status == Status.SUCCESS
    hdr, payload = open_guest_message(vmpck, page)
    assert (hdr.msg_seqno, hdr.msg_type) == (seqno + 1, MsgType.MSG_REPORT_RSP)
    rsp = MsgReportRsp.decode(payload)
    assert rsp.status == 0 and len(rsp.report) == SNP_REPORT_SIZE
    return rsp.report


def _verify(tmp_path, report: bytes, chain, *extra):
    path = tmp_path / "report.bin"
    path.write_bytes(report)
    return CliRunner().invoke(main, ["owner", "verify-report", str(path), "--chain", str(chain), *extra])


def test_guest_report_binds_its_nonce_and_verifies_offline(attest, tmp_path):
    """Scenario: the guest asks for a report over its own nonce; the owner checks chain,
    signature, measurement, policy and report_data from exported files alone."""
    guest, vmpck, chain = attest
    nonce = os.urandom(64)
    report = _report(guest, vmpck, 1, nonce)
    r = _verify(tmp_path, report, chain, "--measurement", _expected_measurement().hex(),
                "--policy", hex(SNP_POLICY_DEFAULT), "--report-data", nonce.hex(), "--json")
    assert r.exit_code == 0, r.output
    assert '"report_data"' in r.output and nonce.hex() in r.output
    # The hex text a guest prints is accepted as well.
    (tmp_path / "report.txt").write_text("report: " + report.hex() + "\n")
    r = CliRunner().invoke(main, ["owner", "verify-report", str(tmp_path / "report.txt"),
                                  "--chain", str(chain)])
    assert r.exit_code == 0, r.output
    # ... and so is the guest's whole serial output, as `hv run guests/attest.img > out` saves it.
    (tmp_path / "serial.txt").write_text(f"report_data: {nonce.hex()}\nreport: {report.hex()}\n")
    r = CliRunner().invoke(main, ["owner", "verify-report", str(tmp_path / "serial.txt"),
                                  "--chain", str(chain), "--report-data", nonce.hex()])
    assert r.exit_code == 0, r.output


def test_flipped_byte_wrong_chain_and_wrong_measurement_are_rejected(attest, tmp_path, psp_state):
    """Scenario: one flipped byte in the signed range, a VCEK from another chip, an unexpected
    measurement, a different nonce: each is rejected with a one-line reason and exit 1."""
    guest, vmpck, chain = attest
    nonce = os.urandom(64)
    report = _report(guest, vmpck, 1, nonce)
    flipped = bytearray(report)
    flipped[0x90] ^= 1  # the first measurement byte
    r = _verify(tmp_path, bytes(flipped), chain)
    assert r.exit_code == 1 and "VCEK -> report" in r.output, r.output

    other = tmp_path / "other"
    shutil.copytree(chain, other)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.serialization import Encoding
    real = x509.load_der_x509_certificate((chain / "vcek.der").read_bytes())
    builder = (x509.CertificateBuilder().subject_name(real.subject).issuer_name(real.issuer)
               .public_key(real.public_key()).serial_number(real.serial_number)
               .not_valid_before(real.not_valid_before_utc).not_valid_after(real.not_valid_after_utc))
    other_ask = rsa.generate_private_key(65537, 2048)  # the same VCEK key, certified by another ASK
    pss = builder.sign(other_ask, hashes.SHA384(),
                       rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 48))
    (other / "vcek.der").write_bytes(pss.public_bytes(Encoding.DER))
    r = _verify(tmp_path, report, other)
    assert r.exit_code == 1 and "ASK -> VCEK" in r.output and "not signed by this ASK" in r.output, r.output
    ecdsa = builder.sign(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384())
    (other / "vcek.der").write_bytes(ecdsa.public_bytes(Encoding.DER))
    r = _verify(tmp_path, report, other)
    assert r.exit_code == 1 and "RSASSA-PSS" in r.output, r.output
    shutil.copy(chain / "ask.cert", other / "ark.cert")  # an ARK that is not self-signed
    r = _verify(tmp_path, report, other)
    assert r.exit_code == 1 and "ARK -> ARK" in r.output, r.output

    r = _verify(tmp_path, report, chain, "--measurement", "00" * 48)
    assert r.exit_code == 1 and "measurement" in r.output, r.output
    r = _verify(tmp_path, report, chain, "--report-data", "00" * 64)
    assert r.exit_code == 1 and "report_data" in r.output, r.output
    r = _verify(tmp_path, report, chain, "--policy", "0x30001")
    assert r.exit_code == 1 and "policy" in r.output, r.output
    r = _verify(tmp_path, report[:100], chain)
    assert r.exit_code == 2, r.output


def test_report_verifies_against_the_key_servers_x509_chain(attest, tmp_path):
    """Scenario: the owner holds only what AMD's key server serves, cert_chain.pem (ASK then
    ARK) and vcek.pem; the report verifies, and a VCEK another ASK signed, an ASK another ARK
    signed or a chain of one certificate are each one line and the documented status."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.serialization import Encoding

    guest, vmpck, chain = attest
    nonce = os.urandom(64)
    report = _report(guest, vmpck, 1, nonce)
    kds = tmp_path / "kds"
    kds.mkdir()
    for name in ("cert_chain.pem", "vcek.pem"):
        shutil.copy(chain / name, kds / name)
    r = _verify(tmp_path, report, kds, "--measurement", _expected_measurement().hex(),
                "--report-data", nonce.hex())
    assert r.exit_code == 0 and "PASS  ASK -> VCEK" in r.output, r.output

    def rejected(where: str, why: str) -> None:
        r = _verify(tmp_path, report, kds)
        lines = r.output.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1, r.output
        assert f"REJECTED at {where}" in lines[0] and why in lines[0], r.output

    real = x509.load_pem_x509_certificate((chain / "vcek.pem").read_bytes())
    pss = padding.PSS(padding.MGF1(hashes.SHA384()), 48)
    other_key = rsa.generate_private_key(65537, 2048)
    forged = (x509.CertificateBuilder().subject_name(real.subject).issuer_name(real.issuer)
              .public_key(real.public_key()).serial_number(real.serial_number)
              .not_valid_before(real.not_valid_before_utc).not_valid_after(real.not_valid_after_utc))
    for ext in real.extensions:
        forged = forged.add_extension(ext.value, ext.critical)
    forged = forged.sign(other_key, hashes.SHA384(), rsa_padding=pss)
    (kds / "vcek.pem").write_bytes(forged.public_bytes(Encoding.PEM))
    rejected("ASK -> VCEK", "not signed by this ASK")

    shutil.copy(chain / "vcek.pem", kds / "vcek.pem")
    ask = x509.load_pem_x509_certificate((chain / "ask.pem").read_bytes())
    other_ask = (x509.CertificateBuilder().subject_name(ask.subject).issuer_name(ask.issuer)
                 .public_key(ask.public_key()).serial_number(ask.serial_number)
                 .not_valid_before(ask.not_valid_before_utc).not_valid_after(ask.not_valid_after_utc)
                 .sign(other_key, hashes.SHA384(), rsa_padding=pss))
    (kds / "cert_chain.pem").write_bytes(other_ask.public_bytes(Encoding.PEM)
                                         + (chain / "ark.pem").read_bytes())
    rejected("ARK -> ASK", "not signed by this ARK")

    (kds / "cert_chain.pem").write_bytes((chain / "ask.pem").read_bytes())
    r = _verify(tmp_path, report, kds)
    assert r.exit_code == 2 and "expected 2 certificates" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_replayed_request_gets_aead_oflow_and_no_report(attest):
    """Scenario: the host replays the guest's first request (seqno 1) and sends a stale seqno;
    the PSP answers AEAD_OFLOW and writes no response, then the next fresh seqno works."""
    guest, vmpck, _chain = attest
    nonce = os.urandom(64)
    first = seal_guest_message(vmpck, 1, MsgType.MSG_REPORT_REQ, MsgReportReq(nonce).encode())
    status, _page = guest.guest_request(first)
    assert status == Status.SUCCESS
    status, page = guest.guest_request(first)
    assert status == Status.AEAD_OFLOW and page == bytes(len(page))
    status, page = _request(guest, vmpck, 2, nonce)  # the response's seqno, not counter + 1
    assert status == Status.AEAD_OFLOW and page == bytes(len(page))
    assert len(_report(guest, vmpck, 3, nonce)) == SNP_REPORT_SIZE


def test_request_under_another_key_is_refused(attest):
    """Scenario: a message sealed with a key other than the VMPCK gets no report."""
    guest, _vmpck, _chain = attest
    status, page = _request(guest, os.urandom(32), 1, bytes(64))
    assert status == Status.INVALID_PARAM and page == bytes(len(page))


def test_ghcb_guest_request_exit_carries_the_message(attest):
    """Scenario: the guest's VMGEXIT 0x80000011 names a shared request page and a shared
    response page; KVM runs SNP_GUEST_REQUEST and answers the firmware status in info_2. A
    private (guest-assigned) response page is refused as bad input before the PSP is asked."""
    import struct
    from types import SimpleNamespace

    from hv.kvm.ghcb import GHCB_SIZE, Ghcb, MsrProto, SwExit
    from hv.kvm.sev_es import EsExits

    guest, vmpck, _chain = attest
    vm = guest.vm
    ghcb_gpa, req_gpa, resp_gpa = 0x4000, 0x5000, 0x6000
    nonce = os.urandom(64)

    def vmgexit(resp: int) -> tuple[int, int]:
        g = Ghcb(ghcb_gpa, bytes(GHCB_SIZE))
        g.set("sw_exit_code", SwExit.SNP_GUEST_REQUEST)
        g.set("sw_exit_info_1", req_gpa)
        g.set("sw_exit_info_2", resp)
        struct.pack_into("<H", g.page, 0xFFA, 2)
        vm.write_gpa(ghcb_gpa, bytes(g.page))
        es = EsExits(vm, SimpleNamespace(ghcb_msr=ghcb_gpa | MsrProto.REG_GPA_REQ))
        es.vmgexit()  # an SNP guest registers its GHCB first
        es.control.ghcb_msr = ghcb_gpa
        assert es.vmgexit() is None
        return struct.unpack("<QQ", vm.read_gpa(ghcb_gpa + 0x398, 16))

    vm.write_gpa(req_gpa, seal_guest_message(vmpck, 1, MsgType.MSG_REPORT_REQ,
                                             MsgReportReq(nonce).encode()).ljust(0x1000, b"\0"))
    assert vmgexit(resp_gpa) == (0, 0)
    hdr, payload = open_guest_message(vmpck, vm.read_gpa(resp_gpa, 0x1000))
    assert hdr.msg_seqno == 2 and MsgReportRsp.decode(payload).report[0x50:0x90] == nonce
    assert vmgexit(resp_gpa) == (0, Status.AEAD_OFLOW)  # the same bytes again: a replay
    assert vmgexit(0x1000) == (2, 5)  # a launched (private) page: GHCB_ERR_INVALID_INPUT


def test_owner_checks_the_measurement_against_the_image(psp_state, tmp_path):
    """Scenario: a report from `sevcheck.img` launched by the VMM verifies with --image of that
    image and is rejected with --image of another one (`measure --snp` is the expectation)."""
    from pathlib import Path

    from hv.vmm.vmm import Vmm, VmmConfig

    guests = Path(__file__).resolve().parents[2] / "guests"
    vmm = Vmm(VmmConfig(image=(guests / "sevcheck.img").read_bytes(), vm_type="sev-snp",
                        psp_state=psp_state))
    try:
        vmm.load()
        vmpck = vmm.machine.psp_firmware._ctx.snp_guests[vmm.sev.gctx].vmpck[0]
        report = _report(vmm.sev, vmpck, 1, b"\x42" * 64)
    finally:
        vmm.close()
    state = tmp_path / "psp-state.json"
    shutil.copy(psp_state, state)
    chain = tmp_path / "certs"
    assert CliRunner().invoke(main, ["psp", "export", "-o", str(chain), "--psp-state", str(state)]).exit_code == 0
    r = _verify(tmp_path, report, chain, "--image", str(guests / "sevcheck.img"))
    assert r.exit_code == 0, r.output
    r = _verify(tmp_path, report, chain, "--image", str(guests / "hello.img"))
    assert r.exit_code == 1 and "measurement" in r.output, r.output


def test_attest_guest_obtains_a_report_over_its_own_nonce(psp_state, tmp_path):
    """Scenario: `attest.img` under --sev-snp makes a nonce from its TSC, seals MSG_REPORT_REQ
    with VMPCK0 from its secrets page, sends it through the GHCB and prints the report; the
    owner verifies it offline against the image, the policy and the printed report_data."""
    import json
    from pathlib import Path

    image = Path(__file__).resolve().parents[2] / "guests" / "attest.img"
    state = tmp_path / "psp-state.json"
    shutil.copy(psp_state, state)
    runner = CliRunner(env={"HV_PSP_STATE": str(state)})
    r = runner.invoke(main, ["run", str(image), "--sev-snp", "-q", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lines = dict(line.split(": ", 1) for line in json.loads(r.stdout)["serial"].splitlines())
    nonce = lines["report_data"]
    assert len(bytes.fromhex(lines["report"])) == SNP_REPORT_SIZE
    (tmp_path / "report.txt").write_text("report: " + lines["report"] + "\n")
    chain = tmp_path / "certs"
    assert runner.invoke(main, ["psp", "export", "-o", str(chain)]).exit_code == 0
    verify = ["owner", "verify-report", str(tmp_path / "report.txt"), "--chain", str(chain),
              "--image", str(image), "--policy", hex(SNP_POLICY_DEFAULT)]
    r = runner.invoke(main, [*verify, "--report-data", nonce])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, [*verify, "--report-data", "00" * 64])
    assert r.exit_code == 1 and "report_data" in r.output, r.output


def test_attest_guest_outside_snp_says_so(psp_state):
    """Scenario: under --sev-es there is no secrets page and no VMPCK: exit 1, no report."""
    import json
    from pathlib import Path

    image = Path(__file__).resolve().parents[2] / "guests" / "attest.img"
    r = CliRunner(env={"HV_PSP_STATE": psp_state}).invoke(
        main, ["run", str(image), "--sev-es", "-q", "--json"], catch_exceptions=False)
    out = json.loads(r.stdout)
    assert out["exit_code"] == 1 and "report:" not in out["serial"], r.output
