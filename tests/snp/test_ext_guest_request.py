"""The SNP extended guest request (GHCB NAE 0x80000012): the host writes the certificate table
(VCEK, ASK, ARK under the GHCB specification's GUIDs) into the guest's shared pages named by RAX
and RBX, then does the guest request; with too few pages it does nothing and answers the
invalid-length error with the pages needed in RBX. The table is parsed here from its bytes
(24-byte entries: GUID in RFC 4122 order, offset u32, length u32; an all-zero terminator), and
its certificates are compared with what `hv psp export` writes."""

from __future__ import annotations

import os
import shutil
import struct
import uuid
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hv.cli import main
from hv.hw.machine import Machine, MachineConfig
from hv.kvm import Kvm
from hv.kvm.ghcb import GHCB_SIZE, Ghcb, MsrProto
from hv.kvm.sev import SevDevice
from hv.kvm.sev_es import EsExits
from hv.kvm.sev_snp import SnpGuest, snp_init
from sevwire import MsgReportReq, MsgReportRsp, MsgType, SnpPageType, open_guest_message, seal_guest_message

GUIDS = {"63da758d-e664-4564-adc5-f4b93be8accd": "VCEK",
         "4ab7b379-bbac-4fe4-a02f-05aef327c782": "ASK",
         "c0b406a4-a803-4952-9743-3fb6014cd0ae": "ARK"}
GHCB_GPA, REQ_GPA, RESP_GPA, CERTS_GPA = 0x4000, 0x5000, 0x6000, 0x8000
EXT_GUEST_REQUEST = 0x8000_0012


@pytest.fixture
def snp(psp_state, tmp_path):
    state = tmp_path / "psp-state.json"
    shutil.copy(psp_state, state)
    machine = Machine(MachineConfig(dram_size=32 << 20, psp_state=str(state)))
    dev = SevDevice(Kvm(machine))
    snp_init(dev)
    dev.ensure_init(es=True)
    vm = dev.kvm.create_vm("sev-snp")
    vm.set_user_memory_region(0, 0, 1 << 20)
    guest = SnpGuest(vm, dev)
    guest.launch_start()
    guest.launch_update(0x1000)
    guest.launch_update(0x2000, SnpPageType.SECRETS)
    guest.launch_finish()
    vmpck = machine.psp_firmware._ctx.snp_guests[guest.gctx].vmpck[0]
    chain = tmp_path / "certs"
    r = CliRunner().invoke(main, ["psp", "export", "-o", str(chain), "--psp-state", str(state)])
    assert r.exit_code == 0, r.output
    return vm, vmpck, chain


def _vmgexit(vm, certs_gpa: int, npages: int) -> tuple[int, int, int]:
    """One VMGEXIT 0x80000012: (sw_exit_info_1, sw_exit_info_2, RBX) of the answer."""
    g = Ghcb(GHCB_GPA, bytes(GHCB_SIZE))
    g.set("sw_exit_code", EXT_GUEST_REQUEST)
    g.set("sw_exit_info_1", REQ_GPA)
    g.set("sw_exit_info_2", RESP_GPA)
    g.set("rax", certs_gpa)
    g.set("rbx", npages)
    struct.pack_into("<H", g.page, 0xFFA, 2)
    vm.write_gpa(GHCB_GPA, bytes(g.page))
    es = EsExits(vm, SimpleNamespace(ghcb_msr=GHCB_GPA | MsrProto.REG_GPA_REQ))
    es.vmgexit()  # an SNP guest registers its GHCB first
    es.control.ghcb_msr = GHCB_GPA
    assert es.vmgexit() is None
    info1, info2 = struct.unpack("<QQ", vm.read_gpa(GHCB_GPA + 0x398, 16))
    rbx = struct.unpack("<Q", vm.read_gpa(GHCB_GPA + 0x318, 8))[0]
    return info1, info2, rbx


def _parse(blob: bytes) -> dict[str, bytes]:
    out, pos = {}, 0
    while True:
        guid, offset, length = struct.unpack_from("<16sII", blob, pos)
        if guid == bytes(16):
            assert offset == length == 0
            return out
        out[GUIDS[str(uuid.UUID(bytes=guid))]] = blob[offset:offset + length]
        pos += 24


def _request(vm, vmpck, seqno: int, nonce: bytes) -> None:
    vm.write_gpa(REQ_GPA, seal_guest_message(vmpck, seqno, MsgType.MSG_REPORT_REQ,
                                             MsgReportReq(nonce).encode()).ljust(0x1000, b"\0"))
    vm.write_gpa(RESP_GPA, bytes(0x1000))


def test_too_few_pages_gets_the_pages_needed_and_no_request(snp):
    """Scenario: one certificate page where the table needs two: info_2 = INVALID_LEN (1) << 32,
    RBX = 2, the pages and the response stay untouched, and the message was not used up (the
    same sequence number then succeeds)."""
    vm, vmpck, _chain = snp
    _request(vm, vmpck, 1, b"\x01" * 64)
    vm.write_gpa(CERTS_GPA, b"\xee" * 0x2000)
    assert _vmgexit(vm, CERTS_GPA, 1) == (0, 1 << 32, 2)
    assert vm.read_gpa(CERTS_GPA, 0x2000) == b"\xee" * 0x2000
    assert vm.read_gpa(RESP_GPA, 0x1000) == bytes(0x1000)
    info1, info2, _rbx = _vmgexit(vm, CERTS_GPA, 2)
    assert (info1, info2) == (0, 0)


def test_the_table_holds_the_exported_chain_and_the_request_is_done(snp):
    """Scenario: with enough pages the guest gets the VCEK, ASK and ARK (X.509 DER, the files
    `hv psp export` writes) under AMD's GUIDs, and the report of the same exit."""
    vm, vmpck, chain = snp
    nonce = os.urandom(64)
    _request(vm, vmpck, 1, nonce)
    assert _vmgexit(vm, CERTS_GPA, 4)[:2] == (0, 0)
    certs = _parse(vm.read_gpa(CERTS_GPA, 4 * 0x1000))
    pem_der = lambda name: x509.load_pem_x509_certificate((chain / name).read_bytes()).public_bytes(Encoding.DER)  # noqa: E731
    assert certs == {"VCEK": (chain / "vcek.der").read_bytes(), "ASK": pem_der("ask.pem"),
                     "ARK": pem_der("ark.pem")}
    hdr, payload = open_guest_message(vmpck, vm.read_gpa(RESP_GPA, 0x1000))
    assert hdr.msg_seqno == 2 and MsgReportRsp.decode(payload).report[0x50:0x90] == nonce


def test_private_certificate_pages_are_bad_input(snp):
    """Scenario: RAX names a launched (private) page: bad input (2, INVALID_INPUT 5), nothing
    is written and no request is made."""
    vm, vmpck, _chain = snp
    _request(vm, vmpck, 1, bytes(64))
    assert _vmgexit(vm, 0x1000, 2)[:2] == (2, 5)
    assert vm.read_gpa(RESP_GPA, 0x1000) == bytes(0x1000)


def test_sevwire_parses_the_table_and_refuses_a_broken_one():
    """Scenario: sevwire's parser reads a table as the byte-level parser above does; a table
    without its terminator, or an entry pointing past the end, is refused."""
    from sevwire import SNP_CERT_VCEK_GUID, SevWireError, parse_snp_cert_table, snp_cert_table

    table = snp_cert_table([(SNP_CERT_VCEK_GUID, b"vcek")])
    assert table[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")
    assert parse_snp_cert_table(table) == {SNP_CERT_VCEK_GUID: b"vcek"}
    assert {GUIDS[k]: v for k, v in parse_snp_cert_table(table).items()} == _parse(table)
    with pytest.raises(SevWireError):
        parse_snp_cert_table(table[:24])
    with pytest.raises(SevWireError):
        parse_snp_cert_table(table[:-1])
