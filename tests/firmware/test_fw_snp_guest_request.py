"""SNP_GUEST_REQUEST against a hypervisor that alters the guest's message in transit.

The guest side is played with the VMPCK0 read through the guest's key from its secrets page; the
request is sealed here with plain AES-GCM over a header written out by hand (es-snp-reference
4.1), so the check does not lean on the sevwire encoder it tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from firmware import Firmware
from fw_flows import SNP_GPA_BASE, snp_launch, snp_platform
from fw_support import Mailbox, SnpMemPort
from sevwire import (
    Cmd,
    MsgReportRsp,
    MsgType,
    SnpGuestRequest,
    SnpLaunchFinish,
    SnpLaunchUpdate,
    SnpPageType,
    Status,
    open_guest_message,
)

PAGE = 0x1000
GCTX, ASID = 0x200000, 1
DATA_SPA, SECRETS_SPA = 0x210000, 0x211000
REQ, RES = 0x402000, 0x403000
RESERVED = [*range(0x38, 0x3C), *range(0x3D, 0x60)]


@dataclass
class Running:
    fw: Firmware
    port: SnpMemPort
    mb: Mailbox
    vmpck0: bytes


@pytest.fixture()
def running(chip) -> Running:
    """A finished SNP guest with a secrets page: it holds VMPCK0, and so does the PSP."""
    port = SnpMemPort()
    fw = Firmware(port, None, chip=chip)
    mb = Mailbox(fw, port)
    snp_platform(mb)
    snp_launch(mb, GCTX, ASID, {DATA_SPA: bytes(PAGE)}, finish=False)
    port.write(SECRETS_SPA, bytes(PAGE))
    assert port.rmpupdate(SECRETS_SPA, True, ASID, SNP_GPA_BASE + PAGE, immutable=True)
    assert mb.status(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(
        GCTX, SnpLaunchUpdate.make_flags(SnpPageType.SECRETS), SECRETS_SPA)) == Status.SUCCESS
    assert mb.status(Cmd.SNP_LAUNCH_FINISH, SnpLaunchFinish(GCTX)) == Status.SUCCESS
    return Running(fw, port, mb, port.read_guest(ASID, SECRETS_SPA + 0x20, 32))


def _report_request(vmpck: bytes, seqno: int) -> bytes:
    """MSG_REPORT_REQ under VMPCK0, reserved header bytes zero, as a Linux guest sends it."""
    hdr = bytearray(0x60)
    struct.pack_into("<Q", hdr, 0x20, seqno)
    struct.pack_into("<BBHBBH", hdr, 0x30, 1, 1, 0x60, MsgType.MSG_REPORT_REQ, 1, 0x60)
    payload = b"\x42" * 64 + bytes(0x20)
    sealed = AESGCM(vmpck).encrypt(seqno.to_bytes(8, "little") + bytes(4), payload, bytes(hdr[0x30:]))
    hdr[0:16] = sealed[-16:]
    return bytes(hdr) + sealed[:-16]


def _ask(w: Running, message: bytes) -> int:
    w.port.write(REQ, message.ljust(PAGE, b"\0"))
    w.port.write(RES, bytes(PAGE))
    return w.mb.status(Cmd.SNP_GUEST_REQUEST, SnpGuestRequest(GCTX, REQ, RES))


@pytest.mark.parametrize("offset", [0x38, 0x3B, 0x3D, 0x4E, 0x5F], ids=hex)
def test_reserved_header_byte_changed_in_transit_is_refused(running, offset):
    """Scenario: the hypervisor changes a reserved byte of the guest's request header. The AAD
    no longer matches: INVALID_PARAM (the bad-tag status), no response, the counter unmoved, so
    the guest's own unaltered request with the same seqno is answered afterwards."""
    good = _report_request(running.vmpck0, 1)
    tampered = bytearray(good)
    tampered[offset] = 0xFF
    assert _ask(running, bytes(tampered)) == Status.INVALID_PARAM
    assert running.port.read(RES, PAGE) == bytes(PAGE)
    assert _ask(running, good) == Status.SUCCESS
    hdr, payload = open_guest_message(running.vmpck0, running.port.read(RES, PAGE))
    assert (hdr.msg_seqno, hdr.msg_type) == (2, MsgType.MSG_REPORT_RSP)
    report = MsgReportRsp.decode(payload).report
    assert report[0x50:0x90] == b"\x42" * 64
