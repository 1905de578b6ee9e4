"""The emulated AMD root as AMD's key distribution service serves it: X.509 ARK and ASK with the
keys of ark.cert and ask.cert, and a VCEK named and extended as AMD's (es-snp-reference 4.4).

The names' DER is copied from certificates AMD's key server served for Milan (the ARK, the ASK
and a VCEK), so the comparison is with AMD's bytes, not with this code's idea of them."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

import firmware._kds as kds
import firmware._vcek as vcek_mod
from sevwire import AmdCert

# Subject (and issuer) names of AMD's Milan certificates, DER, as served by the KDS.
_AMD = ("31143012060355040b0c0b456e67696e656572696e67310b30090603550406130255533114301206035504"
        "070c0b53616e746120436c617261310b300906035504080c024341311f301d060355040a0c16416476616e"
        "636564204d6963726f2044657669636573")
ARK_MILAN_NAME = bytes.fromhex("307b" + _AMD + "3112301006035504030c0941524b2d4d696c616e")
SEV_MILAN_NAME = bytes.fromhex("307b" + _AMD + "3112301006035504030c095345562d4d696c616e")
SEV_VCEK_NAME = bytes.fromhex("307a" + _AMD + "3111300f06035504030c085345562d5643454b")
PSS = padding.PSS(padding.MGF1(hashes.SHA384()), 48)
VCEK_ARC = "1.3.6.1.4.1.3704.1"


def _load(chip):
    ask, ark = kds.kds_chain_der(chip)
    return x509.load_der_x509_certificate(ask), x509.load_der_x509_certificate(ark)


def test_ark_and_ask_carry_the_keys_of_the_amd_format_certificates(chip):
    """Scenario: ark.pem/ask.pem and ark.cert/ask.cert certify the same two RSA-4096 keys."""
    ask, ark = _load(chip)
    for x, raw in ((ark, chip.ark_cert), (ask, chip.ask_cert)):
        assert x.public_key().public_numbers() == AmdCert.decode(raw).public_key().public_numbers()
        assert x.public_key().key_size == 4096
        assert x.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSASSA_PSS
    ark.public_key().verify(ark.signature, ark.tbs_certificate_bytes, PSS, hashes.SHA384())
    ark.public_key().verify(ask.signature, ask.tbs_certificate_bytes, PSS, hashes.SHA384())


def test_ark_and_ask_names_serials_and_ca_extensions_are_amds(chip):
    ask, ark = _load(chip)
    assert ark.subject.public_bytes() == ark.issuer.public_bytes() == ARK_MILAN_NAME
    assert ask.subject.public_bytes() == SEV_MILAN_NAME and ask.issuer.public_bytes() == ARK_MILAN_NAME
    assert (ark.serial_number, ask.serial_number) == (0x10000, 0x10001)
    ark_bc = ark.extensions.get_extension_for_class(x509.BasicConstraints)
    ask_bc = ask.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ark_bc.critical and ark_bc.value.ca and ark_bc.value.path_length is None
    assert ask_bc.critical and ask_bc.value.ca and ask_bc.value.path_length == 0
    ark_ku = ark.extensions.get_extension_for_class(x509.KeyUsage).value
    ask_ku = ask.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ark_ku.key_cert_sign and ark_ku.crl_sign and ask_ku.key_cert_sign and not ask_ku.crl_sign
    aki = ask.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ark.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    for cert in (ark, ask):  # SHA-1 of the key, as in AMD's ARK and ASK
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def test_vcek_names_and_extensions_decode_as_amds(chip):
    """Scenario: subject SEV-VCEK and issuer SEV-Milan with AMD's OU, C, L, ST and O; all eight
    SPLs of the TCB (BL 3, TEE 0, reserved bytes 0, SNP 8, microcode 115), product, HWID."""
    cert = x509.load_der_x509_certificate(vcek_mod.vcek_cert_der(chip))
    assert cert.subject.public_bytes() == SEV_VCEK_NAME
    assert cert.issuer.public_bytes() == SEV_MILAN_NAME
    ask, _ark = _load(chip)
    assert cert.issuer == ask.subject
    exts = {e.oid.dotted_string: e for e in cert.extensions}
    expected = {".1": bytes([2, 1, 1]), ".2": b"\x16\x08Milan-B0",
                ".3.1": bytes([2, 1, 3]), ".3.2": bytes([2, 1, 0]), ".3.4": bytes([2, 1, 0]),
                ".3.5": bytes([2, 1, 0]), ".3.6": bytes([2, 1, 0]), ".3.7": bytes([2, 1, 0]),
                ".3.3": bytes([2, 1, 8]), ".3.8": bytes([2, 1, 115]), ".4": chip.chip_id}
    assert list(exts) == [VCEK_ARC + s for s in expected]  # AMD's order
    for suffix, value in expected.items():
        ext = exts[VCEK_ARC + suffix]
        assert ext.value.value == value and not ext.critical, suffix


def test_certificates_are_made_again_byte_for_byte(chip, monkeypatch):
    """Scenario: nothing is stored, so each process re-makes the certificates: the ARK's
    fingerprint, which an owner pins, must not change (a random PSS salt would change it)."""
    first = kds.kds_chain_der(chip), vcek_mod.vcek_cert_der(chip)
    monkeypatch.setattr(kds, "_cache", {})
    monkeypatch.setattr(vcek_mod, "_cache", {})
    assert (kds.kds_chain_der(chip), vcek_mod.vcek_cert_der(chip)) == first

