"""SNP guest messages and the 1184-byte report at the byte offsets of es-snp-reference 4.1/4.3,
checked against layouts written out by hand here, not against the code's own struct formats."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import sevwire


def test_header_layout_iv_and_aad():
    """Scenario: a sealed MSG_REPORT_REQ decrypts with plain AES-GCM given IV = seqno || 0^4 and
    AAD = bytes 0x30-0x5F; the header fields sit at their spec offsets."""
    key = bytes(range(32))
    payload = sevwire.MsgReportReq(b"\x07" * 64, vmpl=1).encode()
    msg = sevwire.seal_guest_message(key, 5, sevwire.MsgType.MSG_REPORT_REQ, payload, vmpck_index=1)
    assert len(msg) == 0x60 + 0x60
    assert struct.unpack_from("<Q", msg, 0x20)[0] == 5
    assert msg[0x30:0x38] == bytes([1, 1, 0x60, 0, 5, 1, 0x60, 0]) and msg[0x3C] == 1
    iv = (5).to_bytes(8, "little") + bytes(4)
    assert AESGCM(key).decrypt(iv, msg[0x60:] + msg[:16], msg[0x30:0x60]) == payload
    assert msg[16:32] == bytes(16)
    tampered = bytearray(msg)
    tampered[0x3C] = 0  # claim VMPCK0: the AAD changes, the tag fails
    with pytest.raises(sevwire.GuestMessageError):
        sevwire.open_guest_message(key, bytes(tampered))
    assert struct.unpack_from("<II", payload, 0x40) == (1, 0)


def test_report_offsets_and_signed_range():
    """Scenario: the named fields land at their offsets and the signature covers 0x000-0x29F,
    r and s little-endian in 72-byte fields."""
    key = ec.generate_private_key(ec.SECP384R1())
    rep = sevwire.SnpReport(policy=0x30000, report_data=b"\x01" * 64, measurement=b"\x02" * 48,
                            chip_id=b"\x03" * 64, current_tcb=sevwire.tcb_version(3, 0, 8, 115),
                            host_data=b"\x04" * 32)
    raw = sevwire.sign_snp_report(rep, key)
    assert len(raw) == 0x4A0
    assert struct.unpack_from("<IIQ", raw, 0) == (2, 0, 0x30000)
    assert struct.unpack_from("<I", raw, 0x34)[0] == 1
    assert raw[0x50:0x90] == b"\x01" * 64 and raw[0x90:0xC0] == b"\x02" * 48
    assert raw[0xC0:0xE0] == b"\x04" * 32 and raw[0x1A0:0x1E0] == b"\x03" * 64
    assert struct.unpack_from("<Q", raw, 0x38)[0] == struct.unpack_from("<Q", raw, 0x180)[0] \
        == 0x7308000000000003
    assert raw[0x330:] == bytes(0x4A0 - 0x330)
    assert sevwire.verify_snp_report(raw, key.public_key()).encode() == raw
    outside = bytearray(raw)
    outside[0x400] ^= 1  # beyond the signature fields: not signed, so it still verifies
    sevwire.verify_snp_report(bytes(outside), key.public_key())
    inside = bytearray(raw)
    inside[0x29F] ^= 1
    with pytest.raises(sevwire.SignatureError):
        sevwire.verify_snp_report(bytes(inside), key.public_key())
