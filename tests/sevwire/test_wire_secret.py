"""LAUNCH_SECRET packets: layout, MAC and ciphertext recomputed in the test from sev-reference 6,
and the PSP side refusing tampered packets and other launches' measurements."""

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import sevwire as sw

TEK = bytes(range(16))
TIK = bytes(range(16, 32))
IV = bytes.fromhex("00000000000000000000000000fffffe")  # the BE counter wraps into byte 12
MEASURE = hashlib.sha256(b"measurement").digest()
SECRET = b"the owner's disk key, 47 bytes long.... padding"


def independent_packet(flags, api_minor):
    ct = Cipher(algorithms.AES(TEK), modes.CTR(IV)).encryptor().update(SECRET)
    msg = b"\x01" + struct.pack("<I", flags) + IV + struct.pack("<II", len(SECRET), len(ct)) + ct
    if api_minor >= 17:
        msg += MEASURE
    mac = hmac.new(TIK, msg, hashlib.sha256).digest()
    return struct.pack("<I", flags) + IV + mac, ct


@pytest.mark.parametrize("api_minor", [16, 24])
def test_packet_matches_independent_computation(api_minor):
    header, data = sw.package_secret(TEK, TIK, SECRET, MEASURE, 0, api_minor, iv=IV)
    assert (header, data) == independent_packet(0, api_minor)
    assert len(header) == 52


def test_ctr_counter_is_big_endian_over_the_whole_iv():
    # Three blocks from IV ...fffffe: the counter must carry into byte 12, not wrap in a 64-bit half.
    _, data = sw.package_secret(TEK, TIK, bytes(48), MEASURE, 0, 24, iv=IV)
    ecb = Cipher(algorithms.AES(TEK), modes.ECB()).encryptor()
    blocks = [bytes.fromhex(h) for h in ("00000000000000000000000000fffffe", "00000000000000000000000000ffffff",
                                         "00000000000000000000000001000000")]
    assert data == b"".join(ecb.update(b) for b in blocks)


def test_open_round_trip_and_header_fields():
    header, data = sw.package_secret(TEK, TIK, SECRET, MEASURE, 0, 24, flags=sw.SecretFlags.COMPRESSED)
    parsed = sw.SecretHeader.unpack(header)
    assert parsed.flags == 1
    assert sw.open_secret(TEK, TIK, header, data, MEASURE, 0, 24) == SECRET


def test_open_refuses_other_measurement_and_tampering():
    header, data = sw.package_secret(TEK, TIK, SECRET, MEASURE, 0, 24)
    with pytest.raises(sw.SecretMacError):
        sw.open_secret(TEK, TIK, header, data, bytes(32), 0, 24)
    with pytest.raises(sw.SecretMacError):
        sw.open_secret(TEK, TIK, header, data[:-1] + bytes([data[-1] ^ 1]), MEASURE, 0, 24)
    with pytest.raises(sw.SecretMacError):
        sw.open_secret(TEK, TIK, header[:4] + bytes([header[4] ^ 1]) + header[5:], data, MEASURE, 0, 24)
    with pytest.raises(sw.SecretMacError):
        sw.open_secret(TEK, TIK, header, data, MEASURE, 0, 24, guest_len=len(data) + 16)
    with pytest.raises(sw.SecretMacError):
        sw.open_secret(TEK, bytes(16), header, data, MEASURE, 0, 24)


def test_bad_sizes():
    with pytest.raises(sw.BufferLengthError):
        sw.open_secret(TEK, TIK, bytes(51), b"", MEASURE, 0, 24)
    with pytest.raises(sw.FieldRangeError):
        sw.package_secret(TEK, TIK, SECRET, None, 0, 24)
    with pytest.raises(sw.FieldRangeError):
        sw.package_secret(TEK[:15], TIK, SECRET, MEASURE, 0, 24)
