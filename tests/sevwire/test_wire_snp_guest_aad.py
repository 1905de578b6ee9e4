"""The AAD of an SNP guest message is header bytes 0x30-0x5F as sent, reserved bytes included
(es-snp-reference 4.1). Messages are sealed here with plain AES-GCM over hand-written headers,
independently of the code under test."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import sevwire

KEY = bytes(range(0x20, 0x40))
RESERVED = [*range(0x38, 0x3C), *range(0x3D, 0x60)]


def _sealed(seqno: int = 1, reserved: int = 0) -> bytes:
    """A MSG_REPORT_REQ under VMPCK1 whose reserved header bytes all hold `reserved`."""
    hdr = bytearray(0x60)
    struct.pack_into("<Q", hdr, 0x20, seqno)
    struct.pack_into("<BBHBBH", hdr, 0x30, 1, 1, 0x60, 5, 1, 0x60)
    for off in RESERVED:
        hdr[off] = reserved
    hdr[0x3C] = 1
    payload = bytes(range(0x60))
    sealed = AESGCM(KEY).encrypt(seqno.to_bytes(8, "little") + bytes(4), payload, bytes(hdr[0x30:]))
    hdr[0:16] = sealed[-16:]
    return bytes(hdr) + sealed[:-16]


@pytest.mark.parametrize("offset", RESERVED, ids=hex)
def test_a_reserved_byte_changed_in_transit_fails_the_tag(offset):
    """Scenario: the hypervisor flips one reserved header byte of a sealed request; it no longer
    opens (the old code rebuilt the AAD with zeros there and accepted it)."""
    msg = _sealed()
    _hdr, plain = sevwire.open_guest_message(KEY, msg)
    assert plain == bytes(range(0x60))
    tampered = bytearray(msg)
    tampered[offset] ^= 0x80
    with pytest.raises(sevwire.GuestMessageError):
        sevwire.open_guest_message(KEY, bytes(tampered))


def test_reserved_bytes_sealed_by_the_sender_are_kept():
    """Scenario: a sender that set reserved bytes sealed over them; the message opens and its
    header encodes back to the bytes received."""
    msg = _sealed(seqno=7, reserved=0xA5)
    hdr, plain = sevwire.open_guest_message(KEY, msg)
    assert (hdr.msg_seqno, hdr.msg_vmpck, plain) == (7, 1, bytes(range(0x60)))
    assert hdr.encode() == msg[:0x60] and hdr.aad() == msg[0x30:0x60]


def test_a_header_we_build_has_zero_reserved_bytes():
    msg = sevwire.seal_guest_message(KEY, 3, sevwire.MsgType.MSG_REPORT_REQ, bytes(0x60), 2)
    assert all(msg[off] == 0 for off in RESERVED)
    with pytest.raises(sevwire.FieldRangeError):  # struct would have cut it silently
        sevwire.SnpMsgHeader(1, 5, 0x60, rsvd_38=bytes(5)).encode()
