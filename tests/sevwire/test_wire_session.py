"""Session KDF and blob: the published vector (sev-reference 7), round trips, and the PSP side
refusing a wrong WRAP_MAC or POLICY_MAC with an error that names the failed MAC."""

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import sevwire as sw

# sev-reference 7, "Test vector" (virtee unit test): Z = 16 zero bytes, everything else zero.
MASTER = "ab4d269fcc62bedb4511d56c386ce706"
WRAP_TK = ("2137bc7f", "f02c02c4")
WRAP_MAC = ("3176c075", "e6aeed7d")
POLICY_MAC = ("aa7855e1", "5287b4af")


def test_kdf_master_vector():
    assert sw.derive_master(bytes(16), bytes(16)).hex() == MASTER


def test_session_blob_vector():
    blob = sw.seal_session(bytes(16), bytes(16), bytes(16), bytes(16), bytes(16), 0)
    for value, (head, tail) in ((blob.wrap_tk, WRAP_TK), (blob.wrap_mac, WRAP_MAC), (blob.policy_mac, POLICY_MAC)):
        assert value.hex().startswith(head) and value.hex().endswith(tail)
    packed = blob.pack()
    assert len(packed) == 128
    assert packed[0x10:0x14].hex() == WRAP_TK[0]
    assert packed[0x40:0x44].hex() == WRAP_MAC[0]
    assert packed[0x60:0x64].hex() == POLICY_MAC[0]
    assert sw.unseal_session(bytes(16), packed, 0) == (bytes(16), bytes(16))


def test_kdf_multi_block_and_bad_length():
    out = sw.kdf_counter_hmac_sha256(b"k", b"label", b"ctx", 512)
    assert len(out) == 64 and out[:16] != out[32:48]
    with pytest.raises(sw.FieldRangeError):
        sw.kdf_counter_hmac_sha256(b"k", b"label", b"", 12)


@pytest.fixture(scope="module")
def pdh():
    key = ec.generate_private_key(ec.SECP384R1())
    return key, sw.SevCert.from_public_key(key.public_key(), sw.Usage.PDH)


def test_build_then_open(pdh):
    key, cert = pdh
    owner = sw.build_session(cert, 0x5)
    assert len(owner.blob) == 128 and len(owner.godh_cert) == sw.SEV_CERT_SIZE
    godh = sw.SevCert.decode(owner.godh_cert)
    assert godh.pubkey_usage == sw.Usage.PDH and godh.curve == sw.Curve.P384
    assert sw.open_session(owner.blob, owner.godh_cert, key, 0x5) == (owner.tek, owner.tik)


def test_z_is_the_big_endian_x_coordinate(pdh):
    """Z must be exactly what cryptography's ECDH derives: the x-coordinate of d*Q, 48 bytes BE."""
    key, cert = pdh
    godh = ec.generate_private_key(ec.SECP384R1())
    z = sw.ecdh_shared_secret(godh, key.public_key())
    # Independent: scalar-multiply with the peer's private scalar through a derived public key.
    shared_point = ec.derive_private_key(
        godh.private_numbers().private_value * key.private_numbers().private_value % _P384_ORDER,
        ec.SECP384R1()).public_key().public_numbers()
    assert z == shared_point.x.to_bytes(48, "big")


_P384_ORDER = int("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973", 16)


def test_fixed_inputs_are_deterministic(pdh):
    _, cert = pdh
    godh = ec.generate_private_key(ec.SECP384R1())
    args = dict(godh_private_key=godh, tek=b"T" * 16, tik=b"I" * 16, nonce=b"N" * 16, wrap_iv=b"V" * 16)
    assert sw.build_session(cert, 1, **args) == sw.build_session(cert, 1, **args)


def test_wrong_policy_is_a_policy_mac_error(pdh):
    key, cert = pdh
    owner = sw.build_session(cert, sw.Policy.NODBG)
    with pytest.raises(sw.PolicyMacError, match="POLICY_MAC") as err:
        sw.open_session(owner.blob, owner.godh_cert, key, 0)
    assert err.value.status == sw.Status.POLICY_FAILURE


@pytest.mark.parametrize("field", ["wrap_tk", "wrap_mac", "nonce"])
def test_tampered_blob_is_a_wrap_mac_error(pdh, field):
    key, cert = pdh
    owner = sw.build_session(cert, 0)
    blob = sw.SessionBlob.unpack(owner.blob)
    value = bytearray(getattr(blob, field))
    value[0] ^= 1
    bad = dataclasses.replace(blob, **{field: bytes(value)}).pack()
    with pytest.raises(sw.WrapMacError, match="WRAP_MAC"):
        sw.open_session(bad, owner.godh_cert, key, 0)


def test_wrong_pdh_is_a_wrap_mac_error(pdh):
    _, cert = pdh
    owner = sw.build_session(cert, 0)
    with pytest.raises(sw.WrapMacError):
        sw.open_session(owner.blob, owner.godh_cert, ec.generate_private_key(ec.SECP384R1()), 0)


def test_bad_inputs(pdh):
    key, cert = pdh
    owner = sw.build_session(cert, 0)
    with pytest.raises(sw.BufferLengthError):
        sw.open_session(owner.blob[:-1], owner.godh_cert, key, 0)
    with pytest.raises(sw.BufferLengthError):
        sw.open_session(owner.blob, owner.godh_cert[:100], key, 0)
    pek_usage = dataclasses.replace(cert, pubkey_usage=sw.Usage.PEK)
    with pytest.raises(sw.CertificateError, match="usage"):
        sw.build_session(pek_usage, 0)
    p256 = sw.SevCert.from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key(), sw.Usage.PDH)
    with pytest.raises(sw.CertificateError, match="P-384"):
        sw.build_session(p256, 0)
    with pytest.raises(sw.FieldRangeError):
        sw.build_session(cert, 0, tek=bytes(15))
