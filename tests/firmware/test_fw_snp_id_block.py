"""SNP_LAUNCH_FINISH with the guest owner's ID block and ID authentication structure.

The test plays the guest owner with its own encoder, independent of the code under test: the
0x60-byte ID block and the 4 KiB ID authentication structure are packed here with `struct`, the
ECDSA P-384/SHA-384 signatures made with `cryptography` and laid out as AMD's ABI defines them
({r, s} little-endian in 72-byte fields of a 512-byte slot; keys {curve 2, Qx, Qy} in 0x404
bytes), the launch digest and the key digests computed with hashlib. The report is read at its
raw offsets (es-snp-reference 4.3), not through the report decoder.

Every refused finish must answer its status and change nothing: the guest stays in LAUNCH, and a
correct finish afterwards still works.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from firmware import Firmware
from fw_flows import SNP_GPA_BASE, TMR_SPA, snp_launch, snp_platform
from fw_support import MB_BUF, Mailbox, SnpMemPort
from sevwire import (
    SNP_POLICY_DEFAULT,
    Cmd,
    MsgReportReq,
    MsgReportRsp,
    MsgType,
    SnpGuestRequest,
    SnpLaunchFinish,
    SnpLaunchUpdate,
    SnpPageType,
    Status,
    open_guest_message,
    seal_guest_message,
)

PAGE = 0x1000
GCTX, ASID = 0x200000, 1
DATA_SPA, SECRETS_SPA = 0x210000, 0x211000
SECRETS_GPA = SNP_GPA_BASE + PAGE
BLOCK_SPA, AUTH_SPA = 0x400000, 0x401000
REQ, RES = 0x402000, 0x403000
CONTENTS = bytes(range(256)) * 16
FAMILY, IMAGE = bytes(range(1, 17)), b"image-id-0123456"
SVN = 0x1234_5678

# -- the owner's side, written from the ABI ----------------------------------------------------


def _le72(value: int) -> bytes:
    return value.to_bytes(72, "little")


def key_struct(key: ec.EllipticCurvePrivateKey) -> bytes:
    nums = key.public_key().public_numbers()
    return (struct.pack("<I", 2) + _le72(nums.x) + _le72(nums.y)).ljust(0x404, b"\0")


def sig_slot(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA384())))
    return (_le72(r) + _le72(s)).ljust(0x200, b"\0")


def id_block(ld: bytes, policy: int = SNP_POLICY_DEFAULT, version: int = 1) -> bytes:
    block = struct.pack("<48s16s16sIIQ", ld, FAMILY, IMAGE, version, SVN, policy)
    assert len(block) == 0x60
    return block


def id_auth(block: bytes, id_key, author_key=None, *, id_algo: int = 1, auth_algo: int = 1,
            id_field: bytes | None = None, author_field: bytes | None = None,
            block_sig: bytes | None = None, key_sig: bytes | None = None) -> bytes:
    page = bytearray(PAGE)
    id_field = key_struct(id_key) if id_field is None else id_field
    struct.pack_into("<II", page, 0, id_algo, auth_algo if author_key is not None else 0)
    page[0x40:0x240] = sig_slot(id_key, block) if block_sig is None else block_sig
    page[0x240:0x644] = id_field
    if author_key is not None:
        page[0x680:0x880] = sig_slot(author_key, id_field) if key_sig is None else key_sig
        page[0x880:0xC84] = key_struct(author_key) if author_field is None else author_field
    return bytes(page)


def launch_digest() -> bytes:
    """One NORMAL page at SNP_GPA_BASE, then the SECRETS page (contents measured as zeros)."""
    ld = bytes(48)
    for contents, kind, gpa in ((hashlib.sha384(CONTENTS).digest(), 1, SNP_GPA_BASE),
                                (bytes(48), 5, SECRETS_GPA)):
        ld = hashlib.sha384(ld + contents + struct.pack("<HBBBBBBQ", 0x70, kind, 0, 0, 0, 0, 0, gpa)).digest()
    return ld


@pytest.fixture(scope="module")
def keys():
    return ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())


# -- the platform ---------------------------------------------------------------------------------


@dataclass
class Snp:
    fw: Firmware
    port: SnpMemPort
    mb: Mailbox


@pytest.fixture()
def snp(chip) -> Snp:
    """A guest in LAUNCH: one measured page and its secrets page, not finished."""
    port = SnpMemPort()
    fw = Firmware(port, None, chip=chip)
    mb = Mailbox(fw, port)
    snp_platform(mb)
    snp_launch(mb, GCTX, ASID, {DATA_SPA: CONTENTS}, finish=False)
    port.write(SECRETS_SPA, bytes(PAGE))
    assert port.rmpupdate(SECRETS_SPA, True, ASID, SECRETS_GPA, immutable=True)
    assert mb.status(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(
        GCTX, SnpLaunchUpdate.make_flags(SnpPageType.SECRETS), SECRETS_SPA)) == Status.SUCCESS
    return Snp(fw, port, mb)


def _finish(w: Snp, block: bytes | None, auth: bytes | None, flags: int,
            host_data: bytes = bytes(32)) -> Status:
    if block is not None:
        w.port.write(BLOCK_SPA, block)
    if auth is not None:
        w.port.write(AUTH_SPA, auth)
    buf = SnpLaunchFinish(GCTX, BLOCK_SPA, AUTH_SPA, flags, host_data)
    return Status(w.mb.status(Cmd.SNP_LAUNCH_FINISH, buf))


def _refused(w: Snp, block: bytes, auth: bytes, flags: int, status: Status) -> None:
    """The finish answers `status` and changes nothing but its command buffer."""
    w.port.write(BLOCK_SPA, block)
    w.port.write(AUTH_SPA, auth)
    w.port.write(MB_BUF, SnpLaunchFinish(GCTX, BLOCK_SPA, AUTH_SPA, flags, bytes(32)).pack())
    dram, rmp, slots = bytes(w.port.dram), w.port.rmp_snapshot(), dict(w.port.slots)
    assert Status(w.fw.command(int(Cmd.SNP_LAUNCH_FINISH), MB_BUF)) is status
    after = bytes(w.port.dram)
    assert after[:MB_BUF] == dram[:MB_BUF] and after[MB_BUF + PAGE:] == dram[MB_BUF + PAGE:]
    assert w.port.rmp_snapshot() == rmp and w.port.slots == slots


def _report(w: Snp) -> bytes:
    """The guest's MSG_REPORT_REQ (VMPCK0 read from its secrets page), answered by the PSP."""
    vmpck0 = w.port.read_guest(ASID, SECRETS_SPA + 0x20, 32)
    w.port.write(REQ, seal_guest_message(vmpck0, 1, MsgType.MSG_REPORT_REQ,
                                         MsgReportReq(b"\x5a" * 64).encode()).ljust(PAGE, b"\0"))
    assert w.mb.status(Cmd.SNP_GUEST_REQUEST, SnpGuestRequest(GCTX, REQ, RES)) == Status.SUCCESS
    _hdr, payload = open_guest_message(vmpck0, w.port.read(RES, PAGE))
    rsp = MsgReportRsp.decode(payload)
    assert rsp.status == 0
    return rsp.report


def _fields(report: bytes) -> dict:
    return {"guest_svn": struct.unpack_from("<I", report, 0x04)[0],
            "family_id": report[0x10:0x20], "image_id": report[0x20:0x30],
            "key_info": struct.unpack_from("<I", report, 0x48)[0],
            "measurement": report[0x90:0xC0], "host_data": report[0xC0:0xE0],
            "id_key_digest": report[0xE0:0x110], "author_key_digest": report[0x110:0x140]}


ID_ONLY = SnpLaunchFinish.make_flags(id_block=True)
WITH_AUTHOR = SnpLaunchFinish.make_flags(id_block=True, auth_key=True)

# -- accepted ------------------------------------------------------------------------------------


def test_good_id_block_with_author_key_is_accepted_and_reported(snp, keys):
    id_key, author_key = keys
    block = id_block(launch_digest())
    assert _finish(snp, block, id_auth(block, id_key, author_key), WITH_AUTHOR,
                   b"\x77" * 32) is Status.SUCCESS
    f = _fields(_report(snp))
    assert f["measurement"] == launch_digest()
    assert f["id_key_digest"] == hashlib.sha384(key_struct(id_key)).digest()
    assert f["author_key_digest"] == hashlib.sha384(key_struct(author_key)).digest()
    assert (f["family_id"], f["image_id"], f["guest_svn"]) == (FAMILY, IMAGE, SVN)
    assert f["key_info"] & 1 == 1  # AUTHOR_KEY_EN
    assert f["key_info"] >> 2 & 7 == 0  # signed by the VCEK
    assert f["host_data"] == b"\x77" * 32
    # RUNNING now: a second finish is a state error.
    assert _finish(snp, None, None, 0) is Status.INVALID_GUEST_STATE


def test_good_id_block_without_author_key(snp, keys):
    id_key, _ = keys
    block = id_block(launch_digest())
    assert _finish(snp, block, id_auth(block, id_key), ID_ONLY) is Status.SUCCESS
    f = _fields(_report(snp))
    assert f["id_key_digest"] == hashlib.sha384(key_struct(id_key)).digest()
    assert f["author_key_digest"] == bytes(48) and f["key_info"] & 1 == 0
    assert (f["family_id"], f["image_id"], f["guest_svn"]) == (FAMILY, IMAGE, SVN)


def test_without_an_id_block_the_identity_fields_are_zero(snp):
    assert _finish(snp, None, None, 0) is Status.SUCCESS
    f = _fields(_report(snp))
    assert f["id_key_digest"] == f["author_key_digest"] == bytes(48)
    assert f["family_id"] == f["image_id"] == bytes(16)
    assert f["guest_svn"] == 0 and f["key_info"] == 0


def test_an_id_block_given_but_not_enabled_is_ignored(snp, keys):
    """ID_BLOCK_EN clear: the addresses are not read (AMD's firmware too)."""
    id_key, _ = keys
    block = id_block(bytes(48))  # would fail every check
    assert _finish(snp, block, id_auth(block, id_key), 0) is Status.SUCCESS
    assert _fields(_report(snp))["id_key_digest"] == bytes(48)


# -- refused, in AMD's order, without effect --------------------------------------------------


def _bad_cases(keys):
    id_key, author_key = keys
    ld = launch_digest()
    good = id_block(ld)
    other = ec.generate_private_key(ec.SECP384R1())
    off_curve = bytearray(key_struct(id_key))
    off_curve[4] ^= 1  # Qx changed: no longer a point on P-384
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    wrong_curve = (struct.pack("<I", 1) + _le72(p256.x) + _le72(p256.y)).ljust(0x404, b"\0")
    tampered = bytearray(good)
    tampered[0x54] ^= 1  # guest_svn changed after signing
    return {
        # 1. the launch digest is not the guest's: BAD_MEASUREMENT (0x0B)
        "wrong-ld": (id_block(bytes(48)), lambda b: id_auth(b, id_key), ID_ONLY, Status.BAD_MEASUREMENT),
        "ld-of-another-image": (id_block(hashlib.sha384(b"x").digest()), lambda b: id_auth(b, id_key),
                                ID_ONLY, Status.BAD_MEASUREMENT),
        # 2. the policy is not the launch policy: POLICY_FAILURE
        "wrong-policy": (id_block(ld, SNP_POLICY_DEFAULT | 1 << 19), lambda b: id_auth(b, id_key),
                         ID_ONLY, Status.POLICY_FAILURE),
        # 3. algorithms other than 1: INVALID_PARAM
        "id-algo": (good, lambda b: id_auth(b, id_key, id_algo=2), ID_ONLY, Status.INVALID_PARAM),
        "id-algo-0": (good, lambda b: id_auth(b, id_key, id_algo=0), ID_ONLY, Status.INVALID_PARAM),
        "auth-algo": (good, lambda b: id_auth(b, id_key, author_key, auth_algo=2), WITH_AUTHOR,
                      Status.INVALID_PARAM),
        # 4. the ID key's signature over the block: BAD_SIGNATURE (0x0A)
        "signed-by-another-key": (good, lambda b: id_auth(b, id_key, block_sig=sig_slot(other, b)),
                                  ID_ONLY, Status.BAD_SIGNATURE),
        "block-changed-after-signing": (bytes(tampered), lambda b: id_auth(b, id_key, block_sig=sig_slot(id_key, good)),
                                        ID_ONLY, Status.BAD_SIGNATURE),
        "zero-signature": (good, lambda b: id_auth(b, id_key, block_sig=bytes(0x200)), ID_ONLY,
                           Status.BAD_SIGNATURE),
        "id-key-off-curve": (good, lambda b: id_auth(b, id_key, id_field=bytes(off_curve)), ID_ONLY,
                             Status.BAD_SIGNATURE),
        "id-key-not-p384": (good, lambda b: id_auth(b, id_key, id_field=wrong_curve), ID_ONLY,
                            Status.BAD_SIGNATURE),
        # 5. with AUTH_KEY_EN the author key's signature over the 0x404-byte ID key
        "author-signed-another-key": (good, lambda b: id_auth(b, id_key, author_key,
                                                              key_sig=sig_slot(author_key, key_struct(other))),
                                      WITH_AUTHOR, Status.BAD_SIGNATURE),
        "author-key-swapped": (good, lambda b: id_auth(b, id_key, author_key,
                                                       author_field=key_struct(other)),
                               WITH_AUTHOR, Status.BAD_SIGNATURE),
        "author-key-off-curve": (good, lambda b: id_auth(b, id_key, author_key,
                                                         author_field=bytes(off_curve)),
                                 WITH_AUTHOR, Status.BAD_SIGNATURE),
        "author-key-missing": (good, lambda b: id_auth(b, id_key), WITH_AUTHOR, Status.INVALID_PARAM),
        # malformed command buffers
        "reserved-flag-bits": (good, lambda b: id_auth(b, id_key), ID_ONLY | 1 << 3, Status.INVALID_PARAM),
        "auth-key-en-alone": (good, lambda b: id_auth(b, id_key, author_key),
                              SnpLaunchFinish.make_flags(auth_key=True), Status.INVALID_PARAM),
        "vcek-disabled": (good, lambda b: id_auth(b, id_key), ID_ONLY | SnpLaunchFinish.VCEK_DISABLED,
                          Status.UNSUPPORTED),
    }


_K = ec.generate_private_key(ec.SECP384R1())
CASES = list(_bad_cases((_K, _K)))  # only the names


@pytest.mark.parametrize("case", CASES)
def test_bad_id_block_is_refused_without_effect_and_the_guest_still_launches(snp, keys, case):
    block, make_auth, flags, status = _bad_cases(keys)[case]
    _refused(snp, block, make_auth(block), flags, status)
    # Still in LAUNCH: the correct ID block finishes it, and the report carries that one.
    id_key, author_key = keys
    good = id_block(launch_digest())
    assert _finish(snp, good, id_auth(good, id_key, author_key), WITH_AUTHOR) is Status.SUCCESS
    f = _fields(_report(snp))
    assert f["id_key_digest"] == hashlib.sha384(key_struct(id_key)).digest()
    assert f["author_key_digest"] == hashlib.sha384(key_struct(author_key)).digest()


def test_a_refused_id_block_leaves_nothing_behind_for_a_plain_finish(snp, keys):
    """A block that passed the digest and policy checks but not the signature must not leave
    its IDs or key digest in the guest context."""
    id_key, _ = keys
    block = id_block(launch_digest())
    other = ec.generate_private_key(ec.SECP384R1())
    _refused(snp, block, id_auth(block, id_key, block_sig=sig_slot(other, block)), ID_ONLY,
             Status.BAD_SIGNATURE)
    assert _finish(snp, None, None, 0) is Status.SUCCESS
    f = _fields(_report(snp))
    assert f["id_key_digest"] == bytes(48) and f["family_id"] == bytes(16) and f["guest_svn"] == 0


@pytest.mark.parametrize("where", ["block", "auth"])
def test_id_block_in_the_tmr_is_invalid_address(snp, keys, where):
    """The PSP reads both structures from addresses the hypervisor names: never from the TMR."""
    id_key, _ = keys
    block = id_block(launch_digest())
    snp.port.write(BLOCK_SPA, block)
    snp.port.write(AUTH_SPA, id_auth(block, id_key))
    buf = SnpLaunchFinish(GCTX, TMR_SPA if where == "block" else BLOCK_SPA,
                          TMR_SPA if where == "auth" else AUTH_SPA, ID_ONLY, bytes(32))
    assert snp.mb.status(Cmd.SNP_LAUNCH_FINISH, buf) == Status.INVALID_ADDRESS
    assert _finish(snp, block, id_auth(block, id_key), ID_ONLY) is Status.SUCCESS


def test_id_block_beyond_dram_is_invalid_address(snp, keys):
    id_key, _ = keys
    buf = SnpLaunchFinish(GCTX, len(snp.port.dram) - 0x20, AUTH_SPA, ID_ONLY, bytes(32))
    assert snp.mb.status(Cmd.SNP_LAUNCH_FINISH, buf) == Status.INVALID_ADDRESS
    block = id_block(launch_digest())
    assert _finish(snp, block, id_auth(block, id_key), ID_ONLY) is Status.SUCCESS


def test_the_wire_layout_matches_the_abi(keys):
    """The buffer's flags are the u64 at 0x18 and host_data follows at 0x20 (Linux
    `sev_data_snp_launch_finish`, AMD `snp_mcmd_launch_finish_t`)."""
    raw = SnpLaunchFinish(1, 2, 3, WITH_AUTHOR | SnpLaunchFinish.VCEK_DISABLED, b"\xaa" * 32).pack()
    assert len(raw) == 0x40
    assert struct.unpack_from("<QQQQ", raw) == (1, 2, 3, 0b111)
    assert raw[0x20:] == b"\xaa" * 32


def test_checks_run_in_the_reference_order(snp, keys):
    """ld before policy before algorithm before signature: each block below fails every later
    check too, and the status names the first."""
    id_key, _ = keys
    other = ec.generate_private_key(ec.SECP384R1())
    bad_everything = id_block(bytes(48), SNP_POLICY_DEFAULT | 1 << 19)
    _refused(snp, bad_everything, id_auth(bad_everything, id_key, id_algo=7,
                                          block_sig=sig_slot(other, bad_everything)),
             ID_ONLY, Status.BAD_MEASUREMENT)
    bad_policy = id_block(launch_digest(), SNP_POLICY_DEFAULT | 1 << 19)
    _refused(snp, bad_policy, id_auth(bad_policy, id_key, id_algo=7,
                                      block_sig=sig_slot(other, bad_policy)),
             ID_ONLY, Status.POLICY_FAILURE)
    good = id_block(launch_digest())
    _refused(snp, good, id_auth(good, id_key, id_algo=7, block_sig=sig_slot(other, good)),
             ID_ONLY, Status.INVALID_PARAM)
