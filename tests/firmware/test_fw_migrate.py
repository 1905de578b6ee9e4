"""SEV migration between two PSPs: SEND_* on one platform, RECEIVE_* on another.

Two firmware instances with their own state files are two platform identities (their own OCA,
PEK and PDH) on one emulated chip family. Packets are checked against the format computed here
with `cryptography` and `hmac` directly, from the transport keys read out of the sender's guest
context (test-only access), never through sevwire's packet code.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from firmware import Firmware
from fw_flows import CHAIN_SPA, PDH_SPA, TMR_SPA, export_pdh, init_platform, launch
from fw_support import Mailbox, MemPort
from sevwire import (
    SESSION_BLOB_SIZE,
    SEV_CERT_SIZE,
    Activate,
    Cmd,
    DbgDecrypt,
    Deactivate,
    GuestState,
    GuestStatus,
    LaunchUpdateVmsa,
    Policy,
    ReceiveFinish,
    ReceiveStart,
    ReceiveUpdateData,
    ReceiveUpdateVmsa,
    SendCancel,
    SendFinish,
    SendStart,
    SendUpdateData,
    SendUpdateVmsa,
    Status,
)

S = Status.SUCCESS
IMG = 0x200000        # where the source guest's page lives
DST = 0x300000        # where the target puts it
VMSA = 0x280000
SENDER_PDH = 0x20000  # target side: the sender's PDH
SESSION = 0x21000
HDR, TRANS = 0x22000, 0x23000
CERTS = 0x30000
PAGE = bytes(range(256)) * 16


def _other_platform(tmp_path, chip, name: str) -> Mailbox:
    port = MemPort()
    return Mailbox(Firmware(port, tmp_path / name, chip=chip), port)


@pytest.fixture()
def target(tmp_path, chip) -> Mailbox:
    mb = _other_platform(tmp_path, chip, "target.json")
    init_platform(mb, es=True)
    return mb


def _certs(mb: Mailbox) -> tuple[bytes, bytes, bytes]:
    """The target's PDH, PEK||OCA||CEK and ASK||ARK, as its `hv psp export` gives them."""
    pdh, chain = export_pdh(mb)
    ask, ark = mb.fw.export_amd_chain()
    return pdh, chain, ask + ark


def _send_start(src: Mailbox, handle: int, dst: Mailbox, *, session_len=SESSION_BLOB_SIZE,
                certs=None) -> tuple[int, SendStart]:
    pdh, chain, amd = certs or _certs(dst)
    port = src.port
    port.write(CERTS, pdh)
    port.write(CERTS + 0x1000, chain)
    port.write(CERTS + 0x3000, amd)
    buf = SendStart(handle, 0, CERTS, len(pdh), CERTS + 0x1000, len(chain), CERTS + 0x3000,
                    len(amd), SESSION, session_len)
    status, out = src.call(Cmd.SEND_START, buf)
    return status, out


def _send_page(src: Mailbox, handle: int, spa: int = IMG, length: int = 4096,
               cmd=Cmd.SEND_UPDATE_DATA, layout=SendUpdateData) -> tuple[int, bytes, bytes]:
    status, out = src.call(cmd, layout(handle, HDR, 52, spa, length, TRANS, length))
    return status, src.port.read(HDR, 52), src.port.read(TRANS, length)


def _receive_start(src: Mailbox, dst: Mailbox, policy: int) -> tuple[int, int]:
    pdh, _ = export_pdh(src)
    dst.port.write(SENDER_PDH, pdh)
    dst.port.write(SESSION, src.port.read(SESSION, SESSION_BLOB_SIZE))
    status, out = dst.call(Cmd.RECEIVE_START, ReceiveStart(0, policy, SENDER_PDH, SEV_CERT_SIZE,
                                                           SESSION, SESSION_BLOB_SIZE))
    return status, out.handle


def _receive_page(dst: Mailbox, handle: int, header: bytes, trans: bytes, spa: int = DST,
                  cmd=Cmd.RECEIVE_UPDATE_DATA, layout=ReceiveUpdateData) -> int:
    dst.port.write(HDR, header)
    dst.port.write(TRANS, trans)
    return dst.status(cmd, layout(handle, HDR, 52, spa, len(trans), TRANS, len(trans)))


def _state(mb: Mailbox, handle: int) -> GuestState:
    status, out = mb.call(Cmd.GUEST_STATUS, GuestStatus(handle))
    assert status == S
    return GuestState(out.state)


@pytest.fixture()
def sending(mb, target):
    """A running guest (policy 0: debuggable, sendable) on the source, SEND_START done."""
    init_platform(mb, es=True)
    guest = launch(mb, 5, PAGE, IMG)
    status, out = _send_start(mb, guest.handle, target)
    assert status == S and out.session_len == SESSION_BLOB_SIZE and out.policy == 0
    return guest.handle


def test_a_page_moves_between_platforms_and_reads_back_on_the_target(mb, target, sending):
    """Scenario: SEND_START/UPDATE/FINISH on one PSP, RECEIVE_* on another; the page arrives."""
    status, header, trans = _send_page(mb, sending)
    assert status == S and trans != PAGE and PAGE[:16] not in trans
    keys = mb.fw._ctx.guests.lookup(sending)  # test-only: the independent format check below
    flags, iv, mac = struct.unpack("<I16s32s", header)
    assert flags == 0
    dec = Cipher(algorithms.AES(bytes(keys.tek)), modes.CTR(iv)).decryptor()
    assert dec.update(trans) + dec.finalize() == PAGE
    msg = b"\x02" + struct.pack("<I16sII", flags, iv, 4096, 4096) + trans
    assert mac == hmac.new(bytes(keys.tik), msg, hashlib.sha256).digest()
    assert mb.status(Cmd.SEND_FINISH, SendFinish(sending)) == S
    assert _state(mb, sending) is GuestState.SENT
    assert not any(keys.tek) and not any(keys.tik)

    status, handle = _receive_start(mb, target, 0)
    assert status == S and _state(target, handle) is GuestState.RUPDATE
    assert target.status(Cmd.ACTIVATE, Activate(handle, 5)) == S
    assert _receive_page(target, handle, header, trans) == S
    assert target.status(Cmd.RECEIVE_FINISH, ReceiveFinish(handle)) == S
    assert _state(target, handle) is GuestState.RUNNING
    assert target.port.read(DST, 16) != PAGE[:16]  # stored under the target's guest key
    assert target.status(Cmd.DBG_DECRYPT, DbgDecrypt(handle, DST, 0x50000, 4096)) == S
    assert target.port.read(0x50000, 4096) == PAGE
    assert target.fw._ctx.guests.lookup(handle).launch_digest == hashlib.sha256(PAGE).digest()


@pytest.mark.parametrize("where", ["header-iv", "header-mac", "data"])
def test_a_flipped_byte_is_refused_and_writes_nothing(mb, target, sending, where):
    _status, header, trans = _send_page(mb, sending)
    header, trans = bytearray(header), bytearray(trans)
    {"header-iv": header, "header-mac": header, "data": trans}[where][{"header-iv": 5, "header-mac": 30, "data": 1000}[where]] ^= 1
    _, handle = _receive_start(mb, target, 0)
    assert target.status(Cmd.ACTIVATE, Activate(handle, 5)) == S
    before = bytes(target.port.dram[DST:DST + 4096])
    writes = len([e for e in target.port.guest_log if e[0] == "write"])
    assert _receive_page(target, handle, bytes(header), bytes(trans)) == Status.BAD_MEASUREMENT
    assert bytes(target.port.dram[DST:DST + 4096]) == before
    assert len([e for e in target.port.guest_log if e[0] == "write"]) == writes


def test_nosend_guest_is_refused_at_the_source(mb, target):
    init_platform(mb)
    guest = launch(mb, 5, PAGE, IMG, policy=Policy.NOSEND)
    status, _ = _send_start(mb, guest.handle, target)
    assert status == Status.POLICY_FAILURE
    assert _state(mb, guest.handle) is GuestState.RUNNING


def test_domain_policy_sends_only_to_the_same_owner(mb, target, tmp_path, chip):
    init_platform(mb)
    guest = launch(mb, 5, PAGE, IMG, policy=Policy.DOMAIN)
    assert _send_start(mb, guest.handle, target)[0] == Status.POLICY_FAILURE
    assert _send_start(mb, guest.handle, mb)[0] == S  # a snapshot: this platform's own PDH


def test_sev_policy_checks_the_target_chain_to_this_parts_root(mb, target):
    init_platform(mb)
    guest = launch(mb, 5, PAGE, IMG, policy=Policy.SEV)
    pdh, chain, amd = _certs(target)
    bad_amd = bytearray(amd)
    bad_amd[-1] ^= 1  # the ARK's last signature byte
    assert _send_start(mb, guest.handle, target, certs=(pdh, chain, bytes(bad_amd)))[0] == Status.INVALID_CERTIFICATE
    bad_chain = bytearray(chain)
    bad_chain[0x630] ^= 1  # inside the PEK's sig2, the CEK's signature
    assert _send_start(mb, guest.handle, target, certs=(pdh, bytes(bad_chain), amd))[0] == Status.INVALID_CERTIFICATE
    assert _state(mb, guest.handle) is GuestState.RUNNING
    assert _send_start(mb, guest.handle, target)[0] == S


# -- the state machine ------------------------------------------------------------------------

def test_commands_in_the_wrong_guest_state(mb, target):
    init_platform(mb)
    running = launch(mb, 5, PAGE, IMG).handle
    launching = launch(mb, 6, PAGE, IMG + 0x10000, finish=False).handle  # LSECRET
    assert _send_start(mb, launching, target)[0] == Status.INVALID_GUEST_STATE
    for cmd, buf in ((Cmd.SEND_UPDATE_DATA, SendUpdateData(running, HDR, 52, IMG, 16, TRANS, 16)),
                     (Cmd.SEND_FINISH, SendFinish(running)), (Cmd.SEND_CANCEL, SendCancel(running)),
                     (Cmd.RECEIVE_UPDATE_DATA, ReceiveUpdateData(running, HDR, 52, IMG, 16, TRANS, 16)),
                     (Cmd.RECEIVE_FINISH, ReceiveFinish(running))):
        assert mb.status(cmd, buf) == Status.INVALID_GUEST_STATE, cmd.name
    assert _send_start(mb, running, target)[0] == S
    assert _send_start(mb, running, target)[0] == Status.INVALID_GUEST_STATE  # already SUPDATE
    assert mb.status(Cmd.SEND_CANCEL, SendCancel(running)) == S
    assert _state(mb, running) is GuestState.RUNNING
    assert _send_start(mb, running, target)[0] == S
    assert mb.status(Cmd.SEND_FINISH, SendFinish(running)) == S
    assert _send_start(mb, running, target)[0] == Status.INVALID_GUEST_STATE  # SENT
    assert mb.status(Cmd.SEND_UPDATE_DATA, SendUpdateData(running, HDR, 52, IMG, 16, TRANS, 16)) == Status.INVALID_GUEST_STATE
    assert mb.status(Cmd.DEACTIVATE, Deactivate(running)) == S
    assert mb.status(Cmd.DF_FLUSH) == S
    assert mb.status(Cmd.ACTIVATE, Activate(running, 5)) == Status.INVALID_GUEST_STATE


def test_platform_states(tmp_path, chip):
    mb = _other_platform(tmp_path, chip, "fresh.json")
    assert mb.status(Cmd.SEND_START, SendStart(1, 0, CERTS, SEV_CERT_SIZE, 0, 0, 0, 0, SESSION, 128)) == Status.INVALID_PLATFORM_STATE
    assert mb.status(Cmd.RECEIVE_START, ReceiveStart(0, 0, SENDER_PDH, SEV_CERT_SIZE, SESSION, 128)) == Status.INVALID_PLATFORM_STATE
    init_platform(mb)  # INIT, no guest: the UPDATE commands need WORKING
    assert mb.status(Cmd.RECEIVE_UPDATE_DATA, ReceiveUpdateData(1, HDR, 52, DST, 16, TRANS, 16)) == Status.INVALID_PLATFORM_STATE
    assert mb.status(Cmd.SEND_FINISH, SendFinish(1)) == Status.INVALID_PLATFORM_STATE


def test_inactive_receiver_is_refused(mb, target, sending):
    _status, header, trans = _send_page(mb, sending)
    _, handle = _receive_start(mb, target, 0)
    assert _receive_page(target, handle, header, trans) == Status.INACTIVE


# -- malformed buffers ------------------------------------------------------------------------

def test_send_start_bad_lengths_and_certificates(mb, target):
    init_platform(mb)
    handle = launch(mb, 5, PAGE, IMG).handle
    status, out = _send_start(mb, handle, target, session_len=16)
    assert status == Status.INVALID_LEN and out.session_len == SESSION_BLOB_SIZE
    pdh, chain, amd = _certs(target)
    assert _send_start(mb, handle, target, certs=(pdh[:-1], chain, amd))[0] == Status.INVALID_LEN
    assert _send_start(mb, handle, target, certs=(chain[:SEV_CERT_SIZE], chain, amd))[0] == Status.INVALID_CERTIFICATE
    assert mb.status(Cmd.SEND_START, SendStart(99, 0, CERTS, SEV_CERT_SIZE, 0, 0, 0, 0, SESSION, 128)) == Status.INVALID_GUEST
    assert _state(mb, handle) is GuestState.RUNNING


@pytest.mark.parametrize("change,expected", [
    (dict(hdr_len=10), Status.INVALID_LEN),
    (dict(guest_len=0), Status.INVALID_LEN),
    (dict(guest_len=17), Status.INVALID_LEN),
    (dict(guest_len=0x6000, trans_len=0x6000), Status.INVALID_LEN),
    (dict(trans_len=16), Status.INVALID_LEN),
    (dict(guest_paddr=IMG + 8), Status.INVALID_ADDRESS),
    (dict(trans_paddr=1 << 40), Status.INVALID_ADDRESS),
    (dict(guest_paddr=(1 << 64) - 16), Status.INVALID_ADDRESS),
])
def test_send_update_malformed(mb, target, sending, change, expected):
    fields = dict(handle=sending, hdr_paddr=HDR, hdr_len=52, guest_paddr=IMG, guest_len=4096,
                  trans_paddr=TRANS, trans_len=4096)
    fields.update(change)
    status, out = mb.call(Cmd.SEND_UPDATE_DATA, SendUpdateData(**fields))
    assert status == expected
    if "hdr_len" in change:
        assert out.hdr_len == 52
    assert _state(mb, sending) is GuestState.SUPDATE


def test_receive_start_refuses_a_changed_policy_or_another_targets_session(mb, target, sending, tmp_path, chip):
    assert _receive_start(mb, target, Policy.NODBG)[0] == Status.POLICY_FAILURE
    third = _other_platform(tmp_path, chip, "third.json")
    init_platform(third)
    assert _receive_start(mb, third, 0)[0] == Status.BAD_MEASUREMENT
    target.port.write(SESSION, bytes(128))
    assert target.status(Cmd.RECEIVE_START, ReceiveStart(0, 0, SENDER_PDH, SEV_CERT_SIZE, SESSION, 64)) == Status.INVALID_LEN
    assert target.fw.guest_count == 0 and third.fw.guest_count == 0


def test_receive_refuses_unequal_lengths_and_compressed_packets(mb, target, sending):
    _status, header, trans = _send_page(mb, sending)
    keys = mb.fw._ctx.guests.lookup(sending)
    _, handle = _receive_start(mb, target, 0)
    assert target.status(Cmd.ACTIVATE, Activate(handle, 5)) == S
    target.port.write(HDR, header)
    target.port.write(TRANS, trans)
    assert target.status(Cmd.RECEIVE_UPDATE_DATA, ReceiveUpdateData(handle, HDR, 52, DST, 4096, TRANS, 8192)) == Status.INVALID_LEN
    flags, iv = 1, header[4:20]
    mac = hmac.new(bytes(keys.tik), b"\x02" + struct.pack("<I16sII", flags, iv, 4096, 4096) + trans,
                   hashlib.sha256).digest()
    assert _receive_page(target, handle, struct.pack("<I16s32s", flags, iv, mac), trans) == Status.UNSUPPORTED
    assert _receive_page(target, handle, header, trans) == S


def test_vmsa_commands_need_an_es_guest(mb, target, sending):
    assert _send_page(mb, sending, cmd=Cmd.SEND_UPDATE_VMSA, layout=SendUpdateVmsa)[0] == Status.UNSUPPORTED


# -- SEV-ES: the VMSA -------------------------------------------------------------------------

def test_an_es_vmsa_moves_with_a_fresh_integrity_value_and_a_changed_one_is_not_sent(mb, target):
    init_platform(mb, es=True)
    guest = launch(mb, 1, PAGE, IMG, policy=Policy.ES, measure=False)
    vmsa = bytearray(4096)
    vmsa[0x178:0x180] = (0x123456).to_bytes(8, "little")  # RIP
    mb.port.write(VMSA, bytes(vmsa))
    assert mb.status(Cmd.LAUNCH_UPDATE_VMSA, LaunchUpdateVmsa(guest.handle, VMSA, 4096)) == S
    from fw_flows import OUT_SPA
    from sevwire import LaunchFinish, LaunchMeasure
    assert mb.status(Cmd.LAUNCH_MEASURE, LaunchMeasure(guest.handle, OUT_SPA, 48)) == S
    assert mb.status(Cmd.LAUNCH_FINISH, LaunchFinish(guest.handle)) == S
    assert _send_start(mb, guest.handle, target)[0] == S
    assert _send_page(mb, guest.handle, VMSA, 4095, Cmd.SEND_UPDATE_VMSA, SendUpdateVmsa)[0] == Status.INVALID_LEN
    status, header, trans = _send_page(mb, guest.handle, VMSA, 4096, Cmd.SEND_UPDATE_VMSA, SendUpdateVmsa)
    assert status == S
    saved = bytes(mb.port.dram[VMSA:VMSA + 16])
    mb.port.dram[VMSA + 3] ^= 1  # the hypervisor alters the saved register state
    assert _send_page(mb, guest.handle, VMSA, 4096, Cmd.SEND_UPDATE_VMSA, SendUpdateVmsa)[0] == Status.INVALID_PARAM
    mb.port.dram[VMSA:VMSA + 16] = saved

    _, handle = _receive_start(mb, target, Policy.ES)
    assert target.status(Cmd.ACTIVATE, Activate(handle, 1)) == S
    assert _receive_page(target, handle, header, trans, 0x380000, Cmd.RECEIVE_UPDATE_VMSA, ReceiveUpdateVmsa) == S
    assert target.status(Cmd.RECEIVE_FINISH, ReceiveFinish(handle)) == S
    assert target.status(Cmd.DBG_DECRYPT, DbgDecrypt(handle, 0x380000, 0x50000, 4096)) == S
    page = target.port.read(0x50000, 4096)
    assert page[0x178:0x180] == (0x123456).to_bytes(8, "little")
    slot = int.from_bytes(page[0x388:0x390], "little")
    assert TMR_SPA <= slot < TMR_SPA + (1 << 20)  # a slot in the target's own TMR
    assert target.port.read(slot, 8) == (0x380000 | 1).to_bytes(8, "little")
