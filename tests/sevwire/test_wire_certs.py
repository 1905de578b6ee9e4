"""SEV and AMD certificates: byte layout at the spec offsets, round trips, and every signature the
module makes checked by a verifier written here from the raw bytes (sev-reference 7)."""

import dataclasses
import struct

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import sevwire as sw

# ---- an independent reader/verifier, straight from the spec's offsets -----------------------


def le(b: bytes) -> int:
    return int.from_bytes(b, "little")


def raw_ec_key(cert: bytes) -> ec.EllipticCurvePublicKey:
    assert le(cert[0x10:0x14]) == 2, "curve id 2 = P-384"
    x, y = le(cert[0x14:0x14 + 72]), le(cert[0x5C:0x5C + 72])
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1()).public_key()


def raw_slot(cert: bytes, usage: int) -> tuple[int, bytes]:
    for off in (0x414, 0x61C):
        if le(cert[off:off + 4]) == usage:
            return le(cert[off + 4:off + 8]), cert[off + 8:off + 8 + 512]
    raise AssertionError(f"no slot for usage {usage:#x}")


def raw_verify_ecdsa(cert: bytes, signer_key: ec.EllipticCurvePublicKey, usage: int) -> None:
    algo, sig = raw_slot(cert, usage)
    assert algo == 0x2
    der = encode_dss_signature(le(sig[:72]), le(sig[72:144]))
    signer_key.verify(der, cert[:0x414], ec.ECDSA(hashes.SHA256()))


def raw_amd_key(cert: bytes) -> rsa.RSAPublicKey:
    e_bits, n_bits = struct.unpack_from("<II", cert, 0x38)
    e = le(cert[64:64 + e_bits // 8])
    n = le(cert[64 + e_bits // 8:64 + e_bits // 8 + n_bits // 8])
    return rsa.RSAPublicNumbers(e, n).public_key()


def raw_verify_amd(cert: bytes, signer: bytes) -> None:
    e_bits, n_bits = struct.unpack_from("<II", cert, 0x38)
    body_len = 64 + e_bits // 8 + n_bits // 8
    sig = cert[body_len:body_len + n_bits // 8][::-1]
    pss = padding.PSS(padding.MGF1(hashes.SHA384()), 48)
    raw_amd_key(signer).verify(sig, cert[:body_len], pss, hashes.SHA384())


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(rsa4096_pair, p384_keys):
    ark_key, ask_key = rsa4096_pair
    cek_key, oca_key, pek_key, pdh_key = p384_keys
    ark = sw.sign_amd_cert(sw.AmdCert.from_public_key(ark_key.public_key(), sw.Usage.ARK, b"A" * 16), ark_key)
    ask = sw.sign_amd_cert(sw.AmdCert.from_public_key(ask_key.public_key(), sw.Usage.ASK, b"S" * 16, b"A" * 16), ark_key)
    cek = sw.sign_sev_cert(sw.SevCert.from_public_key(cek_key.public_key(), sw.Usage.CEK), ask_key, sw.Usage.ASK)
    oca = sw.sign_sev_cert(sw.SevCert.from_public_key(oca_key.public_key(), sw.Usage.OCA), oca_key, sw.Usage.OCA)
    pek = sw.SevCert.from_public_key(pek_key.public_key(), sw.Usage.PEK, api_major=0, api_minor=24)
    pek = sw.sign_sev_cert(pek, oca_key, sw.Usage.OCA, slot=1)
    pek = sw.sign_sev_cert(pek, cek_key, sw.Usage.CEK, slot=2)
    pdh = sw.sign_sev_cert(sw.SevCert.from_public_key(pdh_key.public_key(), sw.Usage.PDH), pek_key, sw.Usage.PEK)
    return dict(ark=ark, ask=ask, cek=cek, oca=oca, pek=pek, pdh=pdh)


# ---- SEV certificate -------------------------------------------------------------------------


def test_sev_cert_layout(p384_keys):
    key = p384_keys[3].public_key()
    raw = sw.SevCert.from_public_key(key, sw.Usage.PDH, api_major=0, api_minor=24).encode()
    nums = key.public_numbers()
    assert len(raw) == 2084
    assert raw[0:4] == b"\x01\0\0\0" and raw[4:6] == bytes([0, 24])
    assert le(raw[8:12]) == 0x1003 and le(raw[12:16]) == 0x3  # PDH, ECDH-SHA256
    assert le(raw[0x10:0x14]) == 2
    assert raw[0x14:0x14 + 72] == nums.x.to_bytes(72, "little")
    assert raw[0x5C:0x5C + 72] == nums.y.to_bytes(72, "little")
    assert raw[0xA4:0x414] == bytes(0x414 - 0xA4)
    assert le(raw[0x414:0x418]) == 0x1000 and le(raw[0x418:0x41C]) == 0  # empty slots
    assert le(raw[0x61C:0x620]) == 0x1000


def test_chain_signatures_verify_independently(chain):
    pek, cek, oca, pdh = (chain[n].encode() for n in ("pek", "cek", "oca", "pdh"))
    raw_verify_ecdsa(pdh, raw_ec_key(pek), 0x1002)
    raw_verify_ecdsa(pek, raw_ec_key(oca), 0x1001)
    raw_verify_ecdsa(pek, raw_ec_key(cek), 0x1004)
    raw_verify_ecdsa(oca, raw_ec_key(oca), 0x1001)
    assert le(pek[0x414:0x418]) == 0x1001 and le(pek[0x61C:0x620]) == 0x1004  # OCA in sig1, CEK in sig2
    # ASK -> CEK: RSA-PSS SHA-384 (algo 0x101) over 0x000-0x413, little-endian in sig1.
    algo, sig = raw_slot(cek, 0x13)
    assert algo == 0x101
    raw_amd_key(chain["ask"].encode()).verify(sig[::-1], cek[:0x414], padding.PSS(padding.MGF1(hashes.SHA384()), 48),
                                               hashes.SHA384())


def test_amd_certs_verify_independently(chain):
    ark, ask = chain["ark"].encode(), chain["ask"].encode()
    assert len(ark) == len(ask) == 1600
    assert ark[4:20] == ark[0x14:0x24] == b"A" * 16  # self-signed: certifying_id == key_id
    assert ask[0x14:0x24] == b"A" * 16 and le(ask[0x24:0x28]) == 0x13
    raw_verify_amd(ark, ark)
    raw_verify_amd(ask, ark)


def test_module_verifier_accepts_chain(chain):
    assert sw.verify_sev_cert(chain["pdh"], chain["pek"]) == 1
    assert sw.verify_sev_cert(chain["pek"], chain["oca"]) == 1
    assert sw.verify_sev_cert(chain["pek"], chain["cek"]) == 2
    assert sw.verify_sev_cert(chain["cek"], chain["ask"]) == 1
    sw.verify_amd_cert(chain["ark"], chain["ark"])
    sw.verify_amd_cert(chain["ask"], chain["ark"])


def test_round_trips_are_byte_exact(chain):
    for name in ("cek", "oca", "pek", "pdh"):
        raw = chain[name].encode()
        assert sw.SevCert.decode(raw).encode() == raw
    for name in ("ark", "ask"):
        raw = chain[name].encode()
        assert sw.AmdCert.decode(raw).encode() == raw
    joined = sw.join_cert_chain(chain["pek"], chain["oca"], chain["cek"])
    assert len(joined) == 6252 and sw.split_cert_chain(joined) == [chain["pek"], chain["oca"], chain["cek"]]
    assert sw.split_amd_chain(chain["ask"].encode() + chain["ark"].encode()) == [chain["ask"], chain["ark"]]


def test_padding_bytes_survive_a_round_trip(chain):
    raw = bytearray(chain["pdh"].encode())
    raw[6] = 0x5A  # reserved header byte
    raw[0x300] = 0x77  # key-field padding
    assert sw.SevCert.decode(bytes(raw)).encode() == bytes(raw)


def test_tampered_and_mismatched_signatures_fail(chain, p384_keys):
    raw = bytearray(chain["pdh"].encode())
    raw[0x20] ^= 1  # a bit of QX: inside the signed range
    with pytest.raises(sw.SignatureError):
        sw.verify_sev_cert(sw.SevCert.decode(bytes(raw)), chain["pek"])
    with pytest.raises(InvalidSignature):
        raw_verify_ecdsa(bytes(raw), raw_ec_key(chain["pek"].encode()), 0x1002)
    with pytest.raises(sw.SignatureError, match="no signature by usage"):
        sw.verify_sev_cert(chain["pdh"], chain["oca"])  # no OCA slot on a PDH
    impostor = sw.SevCert.from_public_key(p384_keys[0].public_key(), sw.Usage.PEK)
    with pytest.raises(sw.SignatureError):
        sw.verify_sev_cert(chain["pdh"], impostor)


def test_amd_wrong_ark_fails(chain, rsa4096_pair):
    _, other = rsa4096_pair
    fake_ark = sw.sign_amd_cert(sw.AmdCert.from_public_key(other.public_key(), sw.Usage.ARK, b"A" * 16), other)
    with pytest.raises(sw.SignatureError, match="does not verify"):
        sw.verify_amd_cert(chain["ask"], fake_ark)
    stranger = sw.sign_amd_cert(sw.AmdCert.from_public_key(other.public_key(), sw.Usage.ARK, b"X" * 16), other)
    with pytest.raises(sw.SignatureError, match="certifying_id"):
        sw.verify_amd_cert(chain["ask"], stranger)


def test_rsa_sev_cert_and_2048_amd(rsa2048):
    cert = sw.SevCert.from_public_key(rsa2048.public_key(), sw.Usage.CEK)
    raw = cert.encode()
    assert le(raw[0x10:0x14]) == 2048
    assert le(raw[0x14:0x14 + 512]) == 65537
    assert le(raw[0x214:0x214 + 512]) == rsa2048.public_key().public_numbers().n
    assert sw.SevCert.decode(raw).public_key().public_numbers() == rsa2048.public_key().public_numbers()
    naples = sw.sign_amd_cert(sw.AmdCert.from_public_key(rsa2048.public_key(), sw.Usage.ARK, b"N" * 16), rsa2048)
    assert len(naples.encode()) == 832
    sw.verify_amd_cert(naples, naples)
    # Independent: 2048-bit AMD signatures are PSS SHA-256, salt 32.
    body = naples.encode()[:64 + 256 + 256]
    rsa2048.public_key().verify(naples.signature[::-1], body, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                                hashes.SHA256())


def test_malformed_certs_refused(chain):
    raw = chain["pdh"].encode()
    with pytest.raises(sw.BufferLengthError):
        sw.SevCert.decode(raw[:-1])
    with pytest.raises(sw.CertificateError, match="version"):
        sw.SevCert.decode(b"\x02" + raw[1:])
    bad_curve = raw[:0x10] + (7).to_bytes(4, "little") + raw[0x14:]
    with pytest.raises(sw.CertificateError, match="curve"):
        sw.SevCert.decode(bad_curve).public_key()
    off_curve = raw[:0x14] + bytes([raw[0x14] ^ 1]) + raw[0x15:]
    with pytest.raises(sw.CertificateError, match="not a point"):
        sw.SevCert.decode(off_curve).public_key()
    ark = chain["ark"].encode()
    with pytest.raises(sw.BufferLengthError):
        sw.AmdCert.decode(ark[:-1])
    with pytest.raises(sw.BufferLengthError):
        sw.AmdCert.decode(ark[:10])
    with pytest.raises(sw.CertificateError):
        sw.AmdCert.decode(ark[:0x38] + (12).to_bytes(4, "little") + ark[0x3C:])


def test_sign_refuses_full_slots_and_wrong_algorithms(chain, p384_keys):
    with pytest.raises(sw.SignatureError, match="both signature slots"):
        sw.sign_sev_cert(chain["pek"], p384_keys[0], sw.Usage.CEK)
    with pytest.raises(sw.SignatureError):
        sw.sign_sev_cert(chain["pdh"], p384_keys[0], sw.Usage.PEK, algo=sw.Algo.RSA_SHA384, slot=2)
    with pytest.raises(sw.FieldRangeError):
        sw.sign_sev_cert(chain["pdh"], p384_keys[0], sw.Usage.PEK, slot=3)


def test_p384_sha384_signatures(p384_keys):
    cert = sw.SevCert.from_public_key(p384_keys[1].public_key(), sw.Usage.OCA)
    signed = sw.sign_sev_cert(cert, p384_keys[1], sw.Usage.OCA, algo=sw.Algo.ECDSA_SHA384)
    assert sw.verify_sev_cert(signed, signed) == 1
    sig = signed.sig1.raw
    p384_keys[1].public_key().verify(encode_dss_signature(le(sig[:72]), le(sig[72:144])), signed.encode()[:0x414],
                                     ec.ECDSA(hashes.SHA384()))


def test_frozen(chain):
    with pytest.raises(dataclasses.FrozenInstanceError):
        chain["pdh"].pubkey_usage = 0  # type: ignore[misc]
