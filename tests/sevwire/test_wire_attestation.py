"""Legacy ATTESTATION report (208 bytes): layout, signature over 0x00-0x33 checked independently."""

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import sevwire as sw


def test_report_layout_and_independent_signature(p384_keys):
    pek = p384_keys[2]
    report = sw.AttestationReport(bytes(range(16)), bytes(range(32, 64)), 0x5)
    raw = sw.sign_attestation_report(report, pek).encode()
    assert len(raw) == 208
    assert raw[:16] == bytes(range(16)) and raw[0x10:0x30] == bytes(range(32, 64))
    assert int.from_bytes(raw[0x30:0x34], "little") == 5
    assert int.from_bytes(raw[0x34:0x38], "little") == 0x1002
    assert int.from_bytes(raw[0x38:0x3C], "little") == 0x2
    r, s = int.from_bytes(raw[0x40:0x88], "little"), int.from_bytes(raw[0x88:0xD0], "little")
    pek.public_key().verify(encode_dss_signature(r, s), raw[:0x34], ec.ECDSA(hashes.SHA256()))
    assert sw.verify_attestation_report(raw, pek.public_key()).policy == 5
    assert sw.AttestationReport.decode(raw).encode() == raw


def test_report_refusals(p384_keys):
    pek = p384_keys[2]
    raw = bytearray(sw.sign_attestation_report(sw.AttestationReport(bytes(16), bytes(32), 0), pek).encode())
    raw[0x10] ^= 1  # another launch digest
    with pytest.raises(sw.SignatureError):
        sw.verify_attestation_report(bytes(raw), pek.public_key())
    raw[0x10] ^= 1
    with pytest.raises(sw.SignatureError):
        sw.verify_attestation_report(bytes(raw), p384_keys[0].public_key())
    with pytest.raises(sw.BufferLengthError):
        sw.verify_attestation_report(bytes(raw[:207]), pek.public_key())
    cert = sw.SevCert.from_public_key(pek.public_key(), sw.Usage.PEK)
    assert sw.verify_attestation_report(bytes(raw), cert).launch_digest == bytes(32)
