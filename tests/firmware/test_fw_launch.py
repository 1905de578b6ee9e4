"""The launch flow end to end with the in-memory machine, checked against independent
computations: the measurement is recomputed here with hmac/hashlib from the raw inputs, DRAM is
compared with ciphertext computed from the key slot, and every refusal leaves memory unchanged."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fw_flows import GODH_SPA, OUT_SPA, SESSION_SPA, TMR_SPA, export_pdh, init_platform, launch, start_guest
from firmware import PortAsidError
from fw_support import SCRATCH
from sevwire import (
    SEV_CERT_SIZE,
    Activate,
    Cmd,
    DbgDecrypt,
    DbgEncrypt,
    Deactivate,
    GuestStatus,
    Init,
    LaunchFinish,
    LaunchMeasure,
    LaunchSecret,
    LaunchStart,
    LaunchUpdateData,
    LaunchUpdateVmsa,
    Policy,
    Status,
    build_session,
    package_secret,
)

IMG_SPA = 0x100000
SECRET_SPA = 0x200000
HDR_SPA, TRANS_SPA = SCRATCH + 0x5000, SCRATCH + 0x5400


def _expected_measure(tik: bytes, policy: int, image: bytes, mnonce: bytes) -> bytes:
    """sev-reference 6, written out: HMAC-SHA256(TIK, 0x04 || 0 || 24 || 15 || policy || LD || MNONCE).

    The message is 56 bytes (1+1+1+1+4+32+16); the same layout reproduces the published sev-tool
    vector 6faab2da... (the reference's "57 B" is a miscount)."""
    msg = bytes([0x04, 0, 24, 15]) + struct.pack("<I", policy) + hashlib.sha256(image).digest() + mnonce
    assert len(msg) == 56
    return hmac.new(tik, msg, hashlib.sha256).digest()


def _secret_packet(tek: bytes, tik: bytes, secret: bytes, measure: bytes) -> tuple[bytes, bytes]:
    """A LAUNCH_SECRET packet built here from the formula, not with the code under test."""
    iv = os.urandom(16)
    ct = Cipher(algorithms.AES(tek), modes.CTR(iv)).encryptor().update(secret)
    n = len(secret)
    mac = hmac.new(tik, b"\x01" + struct.pack("<I", 0) + iv + struct.pack("<II", n, n) + ct + measure,
                   hashlib.sha256).digest()
    return struct.pack("<I", 0) + iv + mac, ct


def test_full_launch(mb, fw, port):
    """Owner session -> encrypted, measured image -> secret in guest memory -> RUNNING."""
    init_platform(mb)
    pdh, _ = export_pdh(mb)
    policy = int(Policy.NOKS)
    session = build_session(pdh, policy)
    handle, _ = start_guest(mb, policy, session)
    assert mb.status(Cmd.ACTIVATE, Activate(handle, 7)) == Status.SUCCESS
    image = os.urandom(3 * 4096 + 48)
    port.write(IMG_SPA, image)
    assert mb.status(Cmd.LAUNCH_UPDATE_DATA, LaunchUpdateData(handle, IMG_SPA, 4096)) == Status.SUCCESS
    assert mb.status(Cmd.LAUNCH_UPDATE_DATA,
                     LaunchUpdateData(handle, IMG_SPA + 4096, len(image) - 4096)) == Status.SUCCESS
    # DRAM now holds exactly the image encrypted under the key in slot 7, in place
    vek = port.slots[7]
    assert port.read(IMG_SPA, len(image)) == port.encrypt_with(vek, IMG_SPA, image)
    assert port.read_guest(7, IMG_SPA, len(image)) == image

    status, out = mb.call(Cmd.LAUNCH_MEASURE, LaunchMeasure(handle, OUT_SPA, 0))
    assert status == Status.INVALID_LEN and out.len == 48
    status, out = mb.call(Cmd.LAUNCH_MEASURE, LaunchMeasure(handle, OUT_SPA, 64))
    assert status == Status.SUCCESS and out.len == 48
    result = port.read(OUT_SPA, 48)
    measure, mnonce = result[:32], result[32:]
    assert measure == _expected_measure(session.tik, policy, image, mnonce)

    secret = b"the owner's disk key, 32 bytes!!" * 2
    hdr, ct = _secret_packet(session.tek, session.tik, secret, measure)
    port.write(HDR_SPA, hdr)
    port.write(TRANS_SPA, ct)
    buf = LaunchSecret(handle, HDR_SPA, 52, SECRET_SPA, len(secret), TRANS_SPA, len(ct))
    assert mb.status(Cmd.LAUNCH_SECRET, buf) == Status.SUCCESS
    assert port.read_guest(7, SECRET_SPA, len(secret)) == secret
    assert secret not in bytes(port.dram)

    assert mb.status(Cmd.LAUNCH_FINISH, LaunchFinish(handle)) == Status.SUCCESS
    _, gs = mb.call(Cmd.GUEST_STATUS, GuestStatus(handle))
    assert (gs.policy, gs.asid, gs.state) == (policy, 7, 3)
    # the transport keys are gone after LAUNCH_FINISH: a further secret is refused by state
    assert mb.status(Cmd.LAUNCH_SECRET, buf) == Status.INVALID_GUEST_STATE


def test_mnonce_is_fresh(mb, fw):
    init_platform(mb)
    a = launch(mb, 5, bytes(64), IMG_SPA, finish=False)
    b = launch(mb, 6, bytes(64), IMG_SPA + 0x1000, finish=False)
    assert a.mnonce != b.mnonce and a.measurement != b.measurement


def test_each_guest_gets_its_own_vek(mb, fw, port):
    init_platform(mb)
    launch(mb, 5, bytes(64), IMG_SPA)
    launch(mb, 6, bytes(64), IMG_SPA + 0x1000)
    assert port.slots[5] != port.slots[6]
    assert port.read(IMG_SPA, 64) != port.read(IMG_SPA + 0x1000, 64)


def _session_start(mb, port, policy, session, *, blob=None, cmd_policy=None):
    """LAUNCH_START with the owner's inputs in memory; returns (status, buffer written back,
    whether anything in DRAM besides the command buffer changed)."""
    port.write(GODH_SPA, session.godh_cert)
    port.write(SESSION_SPA, session.blob if blob is None else blob)
    buf = LaunchStart(0, policy if cmd_policy is None else cmd_policy, GODH_SPA, SEV_CERT_SIZE, SESSION_SPA, 128)
    port.write(mb.buf_spa, buf.pack())
    before = bytes(port.dram)
    status, out = mb.call(Cmd.LAUNCH_START, buf)
    return status, out, bytes(port.dram) != before


def test_wrong_wrap_mac_is_refused(mb, fw, port):
    init_platform(mb)
    pdh, _ = export_pdh(mb)
    session = build_session(pdh, 0)
    blob = bytearray(session.blob)
    blob[0x40] ^= 1  # WRAP_MAC
    status, out, changed = _session_start(mb, port, 0, session, blob=bytes(blob))
    assert status == Status.BAD_MEASUREMENT
    assert fw.guest_count == 0 and out.handle == 0 and not changed


def test_tampered_wrapped_keys_are_refused(mb, fw, port):
    init_platform(mb)
    pdh, _ = export_pdh(mb)
    session = build_session(pdh, 0)
    blob = bytearray(session.blob)
    blob[0x10] ^= 0x80  # WRAP_TK: the MAC covers it
    status, _, changed = _session_start(mb, port, 0, session, blob=bytes(blob))
    assert status == Status.BAD_MEASUREMENT and fw.guest_count == 0 and not changed


def test_session_for_another_pdh_is_refused(mb, fw, port):
    init_platform(mb)
    pdh, _ = export_pdh(mb)
    session = build_session(pdh, 0)
    assert mb.status(Cmd.PDH_GEN) == Status.SUCCESS
    status, _, changed = _session_start(mb, port, 0, session)
    assert status == Status.BAD_MEASUREMENT and fw.guest_count == 0 and not changed


def test_relaxed_policy_is_refused(mb, fw, port):
    """The hypervisor drops NODBG from the command: POLICY_MAC no longer matches."""
    init_platform(mb)
    pdh, _ = export_pdh(mb)
    session = build_session(pdh, int(Policy.NODBG | Policy.NOKS))
    status, out, changed = _session_start(mb, port, int(Policy.NODBG | Policy.NOKS), session,
                                          cmd_policy=int(Policy.NOKS))
    assert status == Status.POLICY_FAILURE
    assert fw.guest_count == 0 and out.handle == 0 and not changed


def test_bad_godh_certificate(mb, fw, port):
    init_platform(mb)
    pdh, _ = export_pdh(mb)
    session = build_session(pdh, 0)
    godh = bytearray(session.godh_cert)
    godh[0x14] ^= 1  # QX: no longer on the curve
    port.write(GODH_SPA, bytes(godh))
    port.write(SESSION_SPA, session.blob)
    status = mb.status(Cmd.LAUNCH_START, LaunchStart(0, 0, GODH_SPA, SEV_CERT_SIZE, SESSION_SPA, 128))
    assert status == Status.INVALID_CERTIFICATE and fw.guest_count == 0
    assert mb.status(Cmd.LAUNCH_START, LaunchStart(0, 0, GODH_SPA, 2000, SESSION_SPA, 128)) == Status.INVALID_LEN
    assert mb.status(Cmd.LAUNCH_START, LaunchStart(0, 0, GODH_SPA, SEV_CERT_SIZE, SESSION_SPA, 127)) == Status.INVALID_LEN


@pytest.mark.parametrize("tamper", ["mac", "iv", "ciphertext", "measure", "length"])
def test_wrong_secret_mac_writes_nothing(mb, fw, port, tamper):
    init_platform(mb)
    launched = launch(mb, 5, os.urandom(256), IMG_SPA, finish=False)
    tek, tik = launched.session.tek, launched.session.tik
    secret = os.urandom(48)
    measure = launched.measurement if tamper != "measure" else bytes(32)
    hdr, ct = _secret_packet(tek, tik, secret, measure)
    hdr, ct = bytearray(hdr), bytearray(ct)
    if tamper == "mac":
        hdr[20] ^= 1
    elif tamper == "iv":
        hdr[4] ^= 1
    elif tamper == "ciphertext":
        ct[0] ^= 1
    port.write(HDR_SPA, bytes(hdr))
    port.write(TRANS_SPA, bytes(ct))
    n = len(secret) if tamper != "length" else len(secret) - 16
    before = port.read(SECRET_SPA, 64)
    status = mb.status(Cmd.LAUNCH_SECRET, LaunchSecret(launched.handle, HDR_SPA, 52, SECRET_SPA, n, TRANS_SPA, n))
    assert status == Status.BAD_MEASUREMENT
    assert port.read(SECRET_SPA, 64) == before


def test_secret_from_sevwire_packager(mb, fw, port):
    init_platform(mb)
    launched = launch(mb, 5, os.urandom(64), IMG_SPA, finish=False)
    hdr, ct = package_secret(launched.session.tek, launched.session.tik, b"k" * 16, launched.measurement, 0, 24)
    port.write(HDR_SPA, hdr)
    port.write(TRANS_SPA, ct)
    assert mb.status(Cmd.LAUNCH_SECRET, LaunchSecret(launched.handle, HDR_SPA, 52, SECRET_SPA, 16,
                                                     TRANS_SPA, 16)) == Status.SUCCESS
    assert port.read_guest(5, SECRET_SPA, 16) == b"k" * 16


def test_secret_of_any_length_lands_exactly(mb, fw, port):
    """A 27-byte secret is written as 27 bytes: the rest of its last block keeps its plaintext."""
    init_platform(mb)
    launched = launch(mb, 5, os.urandom(64), IMG_SPA, finish=False)
    port.write_guest(5, SECRET_SPA, b"\xee" * 32)
    secret = b"twenty-seven bytes of data!"
    hdr, ct = package_secret(launched.session.tek, launched.session.tik, secret, launched.measurement, 0, 24)
    port.write(HDR_SPA, hdr)
    port.write(TRANS_SPA, ct)
    assert mb.status(Cmd.LAUNCH_SECRET, LaunchSecret(launched.handle, HDR_SPA, 52, SECRET_SPA, 27,
                                                     TRANS_SPA, 27)) == Status.SUCCESS
    assert port.read_guest(5, SECRET_SPA, 32) == secret + b"\xee" * 5


@pytest.mark.parametrize("buf,expected", [
    (LaunchSecret(1, HDR_SPA, 51, SECRET_SPA, 16, TRANS_SPA, 16), Status.INVALID_LEN),
    (LaunchSecret(1, HDR_SPA, 52, SECRET_SPA, 0, TRANS_SPA, 0), Status.INVALID_LEN),
    (LaunchSecret(1, HDR_SPA, 52, SECRET_SPA, 16, TRANS_SPA, 32), Status.INVALID_LEN),
    (LaunchSecret(1, HDR_SPA, 52, SECRET_SPA + 8, 16, TRANS_SPA, 16), Status.INVALID_ADDRESS),
    (LaunchSecret(1, HDR_SPA, 52, 1 << 40, 16, TRANS_SPA, 16), Status.INVALID_ADDRESS),
    (LaunchSecret(1, 1 << 40, 52, SECRET_SPA, 16, TRANS_SPA, 16), Status.INVALID_ADDRESS),
])
def test_secret_buffer_checks(mb, fw, buf, expected):
    init_platform(mb)
    launch(mb, 5, bytes(64), IMG_SPA, finish=False)
    assert mb.status(Cmd.LAUNCH_SECRET, buf) == expected


@pytest.mark.parametrize("paddr,length,expected", [
    (IMG_SPA + 8, 32, Status.INVALID_ADDRESS),
    (IMG_SPA, 24, Status.INVALID_LEN),
    (IMG_SPA, 0, Status.INVALID_LEN),
    ((8 << 20) - 16, 32, Status.INVALID_ADDRESS),  # runs off the end of DRAM
    ((1 << 64) - 16, 32, Status.INVALID_ADDRESS),  # wraps 64 bits
])
def test_update_data_checks_leave_memory_and_digest(mb, fw, port, paddr, length, expected):
    init_platform(mb)
    image = os.urandom(64)
    handle, session = start_guest(mb)
    mb.status(Cmd.ACTIVATE, Activate(handle, 5))
    port.write(IMG_SPA, image)
    port.write((8 << 20) - 16, b"x" * 16)
    before = bytes(port.dram)
    assert mb.status(Cmd.LAUNCH_UPDATE_DATA, LaunchUpdateData(handle, paddr, length)) == expected
    assert bytes(port.dram)[:0x1000] + bytes(port.dram)[0x2000:] == before[:0x1000] + before[0x2000:]
    # the refused update did not enter the digest
    assert mb.status(Cmd.LAUNCH_UPDATE_DATA, LaunchUpdateData(handle, IMG_SPA, 64)) == Status.SUCCESS
    mb.status(Cmd.LAUNCH_MEASURE, LaunchMeasure(handle, OUT_SPA, 48))
    out = port.read(OUT_SPA, 48)
    assert out[:32] == _expected_measure(session.tik, 0, image, out[32:])


def test_update_data_needs_activation(mb, fw, port):
    init_platform(mb)
    handle, _ = start_guest(mb)
    port.write(IMG_SPA, b"A" * 32)
    assert mb.status(Cmd.LAUNCH_UPDATE_DATA, LaunchUpdateData(handle, IMG_SPA, 32)) == Status.INACTIVE
    assert port.read(IMG_SPA, 32) == b"A" * 32


def test_sessionless_launch_measures_with_zero_tik(mb, fw, port):
    init_platform(mb)
    launched = launch(mb, 5, b"B" * 64, IMG_SPA, with_session=False, finish=False)
    assert launched.measurement == _expected_measure(bytes(16), 0, b"B" * 64, launched.mnonce)


# -- debug ----------------------------------------------------------------------------------------

def test_dbg_round_trip(mb, fw, port):
    init_platform(mb)
    launched = launch(mb, 5, b"C" * 64, IMG_SPA)
    assert mb.status(Cmd.DBG_DECRYPT, DbgDecrypt(launched.handle, IMG_SPA, OUT_SPA, 64)) == Status.SUCCESS
    assert port.read(OUT_SPA, 64) == b"C" * 64
    port.write(OUT_SPA, b"D" * 32)
    assert mb.status(Cmd.DBG_ENCRYPT, DbgEncrypt(launched.handle, OUT_SPA, IMG_SPA + 16, 32)) == Status.SUCCESS
    assert port.read_guest(5, IMG_SPA, 64) == b"C" * 16 + b"D" * 32 + b"C" * 16
    assert mb.status(Cmd.DBG_DECRYPT, DbgDecrypt(launched.handle, IMG_SPA, OUT_SPA, 24)) == Status.INVALID_LEN
    assert mb.status(Cmd.DBG_DECRYPT, DbgDecrypt(launched.handle, IMG_SPA + 4, OUT_SPA, 16)) == Status.INVALID_ADDRESS


def test_dbg_refused_under_nodbg(mb, fw, port):
    init_platform(mb)
    launched = launch(mb, 5, b"E" * 64, IMG_SPA, policy=int(Policy.NODBG))
    port.write(OUT_SPA, bytes(64))
    ciphertext = port.read(IMG_SPA, 64)
    assert mb.status(Cmd.DBG_DECRYPT, DbgDecrypt(launched.handle, IMG_SPA, OUT_SPA, 64)) == Status.POLICY_FAILURE
    assert port.read(OUT_SPA, 64) == bytes(64)
    port.write(OUT_SPA, b"F" * 64)
    assert mb.status(Cmd.DBG_ENCRYPT, DbgEncrypt(launched.handle, OUT_SPA, IMG_SPA, 64)) == Status.POLICY_FAILURE
    assert port.read(IMG_SPA, 64) == ciphertext
    # NODBG wins even over an otherwise malformed request
    assert mb.status(Cmd.DBG_DECRYPT, DbgDecrypt(launched.handle, 3, 5, 7)) == Status.POLICY_FAILURE


def test_dbg_uses_only_the_named_guests_key(mb, fw, port):
    """Guest B's debug request aimed at guest A's memory decrypts with B's key: garbage."""
    init_platform(mb)
    a = launch(mb, 5, b"G" * 64, IMG_SPA, policy=int(Policy.NODBG))
    b = launch(mb, 6, b"H" * 64, IMG_SPA + 0x1000)
    assert mb.status(Cmd.DBG_DECRYPT, DbgDecrypt(b.handle, IMG_SPA, OUT_SPA, 64)) == Status.SUCCESS
    assert port.read(OUT_SPA, 64) != b"G" * 64
    assert port.read_guest(5, IMG_SPA, 64) == b"G" * 64
    assert a.handle != b.handle


# -- ASIDs, SEV-ES, key sharing -------------------------------------------------------------------

def test_asid_rules(mb, fw, port):
    init_platform(mb, flush=False)
    h1, _ = start_guest(mb, with_session=False)
    h2, _ = start_guest(mb, with_session=False)
    assert mb.status(Cmd.ACTIVATE, Activate(h1, 5)) == Status.DFFLUSH_REQUIRED  # dirty since INIT
    assert mb.status(Cmd.DF_FLUSH) == Status.SUCCESS
    assert mb.status(Cmd.ACTIVATE, Activate(h1, 0)) == Status.INVALID_ASID
    assert mb.status(Cmd.ACTIVATE, Activate(h1, 16)) == Status.INVALID_ASID  # > max_asid 15
    assert mb.status(Cmd.ACTIVATE, Activate(h1, 4)) == Status.INVALID_ASID  # ES range, SEV guest
    assert mb.status(Cmd.ACTIVATE, Activate(h1, 5)) == Status.SUCCESS
    assert mb.status(Cmd.ACTIVATE, Activate(h2, 5)) == Status.ASID_OWNED
    assert mb.status(Cmd.ACTIVATE, Activate(h1, 6)) == Status.ACTIVE
    assert mb.status(Cmd.DEACTIVATE, Deactivate(h1)) == Status.SUCCESS
    assert 5 not in port.slots
    assert mb.status(Cmd.ACTIVATE, Activate(h2, 5)) == Status.DFFLUSH_REQUIRED
    assert mb.status(Cmd.DF_FLUSH) == Status.SUCCESS
    assert mb.status(Cmd.ACTIVATE, Activate(h2, 5)) == Status.SUCCESS
    assert port.key_log == [("program", 5), ("clear", 5), ("program", 5)]


def test_sev_es_init_and_asid_range(mb, fw, port):
    assert mb.status(Cmd.INIT, Init(1, TMR_SPA + 0x1000, 1 << 20)) == Status.INVALID_ADDRESS
    assert mb.status(Cmd.INIT, Init(1, TMR_SPA, 1 << 19)) == Status.INVALID_LEN
    assert mb.status(Cmd.INIT, Init(1, 16 << 20, 1 << 20)) == Status.INVALID_ADDRESS  # beyond DRAM
    assert mb.status(Cmd.INIT, Init(2)) == Status.INVALID_CONFIG
    assert mb.status(Cmd.INIT, Init(0, 123, 456)) == Status.SUCCESS  # no ES: TMR ignored
    assert mb.status(Cmd.SHUTDOWN) == Status.SUCCESS
    init_platform(mb, es=True)
    es, _ = start_guest(mb, int(Policy.ES), with_session=False)
    assert mb.status(Cmd.ACTIVATE, Activate(es, 5)) == Status.INVALID_ASID  # plain SEV range
    assert mb.status(Cmd.ACTIVATE, Activate(es, 4)) == Status.SUCCESS
    port.write(IMG_SPA, b"V" * 4096)
    assert mb.status(Cmd.LAUNCH_UPDATE_VMSA, LaunchUpdateVmsa(es, IMG_SPA, 4095)) == Status.INVALID_LEN
    assert mb.status(Cmd.LAUNCH_UPDATE_VMSA, LaunchUpdateVmsa(es, IMG_SPA, 4096)) == Status.SUCCESS
    # Encrypted in place with the firmware's edits: 0 at 0x380, the TMR slot's address at 0x388,
    # and in that slot the page's address (tag) and an 8-byte integrity value of the plaintext.
    page = port.read_guest(4, IMG_SPA, 4096)
    slot = int.from_bytes(page[0x388:0x390], "little")
    assert page[:0x380] == b"V" * 0x380 and page[0x390:] == b"V" * (4096 - 0x390)
    assert page[0x380:0x388] == bytes(8) and TMR_SPA <= slot < TMR_SPA + (1 << 20) and slot % 16 == 0
    entry = port.read(slot, 16)
    assert int.from_bytes(entry[:8], "little") == IMG_SPA | 1
    assert entry[8:] == hashlib.blake2b(page[:0xFC0], digest_size=8, person=b"hv-vmsa").digest()


def test_es_policy_needs_es_platform(mb, fw):
    init_platform(mb)
    status = mb.status(Cmd.LAUNCH_START, LaunchStart(0, int(Policy.ES)))
    assert status == Status.UNSUPPORTED and fw.guest_count == 0


def test_key_sharing(mb, fw, port):
    init_platform(mb)
    first, _ = start_guest(mb, 0, with_session=False)
    status, out = mb.call(Cmd.LAUNCH_START, LaunchStart(first, 0))
    assert status == Status.SUCCESS and out.handle != first
    mb.status(Cmd.ACTIVATE, Activate(first, 5))
    mb.status(Cmd.ACTIVATE, Activate(out.handle, 6))
    assert port.slots[5] == port.slots[6]
    assert mb.status(Cmd.LAUNCH_START, LaunchStart(first, int(Policy.NODBG))) == Status.POLICY_FAILURE
    lonely, _ = start_guest(mb, int(Policy.NOKS), with_session=False)
    assert mb.status(Cmd.LAUNCH_START, LaunchStart(lonely, int(Policy.NOKS))) == Status.POLICY_FAILURE
    assert mb.status(Cmd.LAUNCH_START, LaunchStart(99, 0)) == Status.INVALID_GUEST


def test_shutdown_clears_every_key_and_guest(mb, fw, port):
    init_platform(mb)
    launch(mb, 5, bytes(32), IMG_SPA)
    launch(mb, 6, bytes(32), IMG_SPA + 0x1000)
    assert mb.status(Cmd.SHUTDOWN) == Status.SUCCESS
    assert port.slots == {} and fw.guest_count == 0
    init_platform(mb)
    assert mb.status(Cmd.GUEST_STATUS, GuestStatus(1)) == Status.INVALID_GUEST


def test_guest_keys_never_reach_the_state_file(mb, fw, port, nv_path):
    init_platform(mb)
    launched = launch(mb, 5, bytes(32), IMG_SPA, finish=False)
    assert mb.status(Cmd.PDH_GEN) == Status.SUCCESS  # forces a write of the state file
    text = nv_path.read_text()
    for key in (port.slots[5], launched.session.tek, launched.session.tik):
        assert key.hex() not in text.lower()

    def names(node):
        if isinstance(node, dict):
            for name, value in node.items():
                yield name
                yield from names(value)

    assert set(names(json.loads(text)["body"])) == {
        "chip", "chip_id", "ark_key", "ask_key", "ark_cert", "ask_cert", "cek_key", "cek_cert",
        "owner", "oca_key", "oca_cert", "pek_key", "pek_cert", "pdh_key", "pdh_cert", "externally_owned"}


def test_shutdown_with_a_stuck_key_slot_still_ends_uninit(mb, fw, port):
    init_platform(mb)
    launch(mb, 5, bytes(32), IMG_SPA)

    def stuck(asid: int) -> None:
        raise PortAsidError(f"slot {asid} stuck")

    port.clear_key = stuck  # type: ignore[method-assign]
    assert mb.status(Cmd.SHUTDOWN) == Status.HWERROR_UNSAFE
    assert fw.platform_state == 0 and fw.guest_count == 0
