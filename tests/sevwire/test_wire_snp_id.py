"""The SNP ID block and ID authentication structure (es-snp-reference 3.6): exact offsets,
round trips, and the key and signature formats against `cryptography` directly."""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import sevwire as sw


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP384R1())


def test_id_block_offsets_and_round_trip():
    block = sw.SnpIdBlock(b"L" * 48, b"F" * 16, b"I" * 16, 1, 0x01020304, 0x30000)
    raw = block.encode()
    assert len(raw) == sw.ID_BLOCK_SIZE == 0x60
    assert raw[:0x30] == b"L" * 48 and raw[0x30:0x40] == b"F" * 16 and raw[0x40:0x50] == b"I" * 16
    assert struct.unpack_from("<IIQ", raw, 0x50) == (1, 0x01020304, 0x30000)
    assert sw.SnpIdBlock.decode(raw) == block
    with pytest.raises(sw.BufferLengthError):
        sw.SnpIdBlock.decode(raw[:-1])
    with pytest.raises(sw.FieldRangeError):
        sw.SnpIdBlock(b"L" * 47).encode()
    with pytest.raises(sw.FieldRangeError):
        sw.SnpIdBlock(b"L" * 48, guest_svn=1 << 32).encode()


def test_key_structure_and_digest(key):
    field = sw.snp_id_key(key)
    n = key.public_key().public_numbers()
    assert len(field) == sw.ID_KEY_SIZE == 0x404
    assert struct.unpack_from("<I", field)[0] == sw.ID_KEY_CURVE_P384 == 2
    assert field[4:0x4C] == n.x.to_bytes(72, "little") and field[0x4C:0x94] == n.y.to_bytes(72, "little")
    assert field[0x94:] == bytes(0x404 - 0x94)
    assert sw.snp_id_key(key.public_key()) == field
    assert sw.snp_id_key_digest(field) == hashlib.sha384(field).digest()
    assert sw.snp_public_key(field).public_numbers() == n
    with pytest.raises(sw.SignatureError):
        sw.snp_id_key(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(sw.SignatureError):
        sw.snp_public_key(b"\x03" + field[1:])  # curve 3
    bad = bytearray(field)
    bad[0x4C] ^= 1
    with pytest.raises(sw.SignatureError):
        sw.snp_public_key(bytes(bad))  # not on the curve


def test_signature_slot_verifies_with_cryptography(key):
    slot = sw.snp_id_sign(key, b"message")
    assert len(slot) == sw.ID_SIG_SIZE == 0x200 and slot[0x90:] == bytes(0x200 - 0x90)
    r, s = int.from_bytes(slot[:72], "little"), int.from_bytes(slot[72:144], "little")
    key.public_key().verify(encode_dss_signature(r, s), b"message", ec.ECDSA(hashes.SHA384()))
    sw.snp_id_verify(sw.snp_id_key(key), slot, b"message")
    with pytest.raises(sw.SignatureError):
        sw.snp_id_verify(sw.snp_id_key(key), slot, b"messagf")
    with pytest.raises(sw.SignatureError):
        sw.snp_id_verify(sw.snp_id_key(key), bytes(0x200), b"message")


def test_id_auth_offsets(key):
    author = ec.generate_private_key(ec.SECP384R1())
    block = sw.SnpIdBlock(bytes(48), policy=0x30000).encode()
    auth = sw.make_snp_id_auth(block, key, author)
    raw = auth.encode()
    assert len(raw) == sw.ID_AUTH_SIZE == 0x1000
    assert struct.unpack_from("<II", raw) == (1, 1)
    assert raw[0x240:0x644] == sw.snp_id_key(key) and raw[0x880:0xC84] == sw.snp_id_key(author)
    sw.snp_id_verify(raw[0x240:0x644], raw[0x40:0x240], block)
    sw.snp_id_verify(raw[0x880:0xC84], raw[0x680:0x880], raw[0x240:0x644])
    assert raw[8:0x40] == bytes(0x38) and raw[0x644:0x680] == bytes(0x3C) and raw[0xC84:] == bytes(0x37C)
    assert sw.SnpIdAuth.decode(raw) == auth
    alone = sw.make_snp_id_auth(block, key).encode()
    assert struct.unpack_from("<II", alone) == (1, 0) and alone[0x680:] == bytes(0x1000 - 0x680)
