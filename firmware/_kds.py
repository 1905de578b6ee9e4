"""What AMD's key distribution service serves for this chip (es-snp-reference 4.4), in X.509.

The KDS serves `cert_chain` (the ASK, then the ARK, PEM) beside each VCEK, and SNP tooling
verifies VCEK -> ASK -> ARK as an ordinary X.509 chain. AMD's certificates, as served:

- ARK: self-signed, serial 0x10000, CN=ARK-Milan; key usage certSign and cRLSign (critical),
  subject key id, basic constraints CA (critical).
- ASK: signed by the ARK, serial 0x10001, CN=SEV-Milan; subject and authority key ids, basic
  constraints CA with path length 0 (critical), key usage certSign (critical).
- both RSA-4096, signed with RSASSA-PSS, SHA-384, MGF1 SHA-384, salt 48; every name is
  OU=Engineering, C=US, L=Santa Clara, ST=CA, O=Advanced Micro Devices, CN=...
AMD's also name a CRL on the KDS; these do not (no CRL is served for the emulated root).

Nothing new is stored: the certificates are made again from the chip's stored ARK and ASK keys,
the same keys as ark.cert and ask.cert, and come out byte for byte the same every time (fixed
names, serials and validity, and a PSS salt derived from the key and the signed bytes). A random
salt would give a new ARK fingerprint at every export, and a fingerprint is how an owner pins
the root.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from firmware._identity import ChipIdentity

__all__ = ["PRODUCT", "KDS_NOT_BEFORE", "KDS_NOT_AFTER", "amd_name", "kds_chain_der",
           "sign_pss_der"]

PRODUCT = "Milan"
KDS_NOT_BEFORE = datetime.datetime(2020, 10, 22, 18, 24, 20, tzinfo=datetime.timezone.utc)
KDS_NOT_AFTER = datetime.datetime(2045, 10, 22, 18, 24, 20, tzinfo=datetime.timezone.utc)
"""The validity of AMD's Milan ASK; the ARK and every VCEK made here use it too."""
_ARK_SERIAL, _ASK_SERIAL = 0x10000, 0x10001
_SALT_LEN = 48
_cache: dict[bytes, tuple[bytes, bytes]] = {}


def amd_name(common_name: str) -> x509.Name:
    """A name as AMD writes it, in AMD's order (C is a PrintableString, the rest UTF8)."""
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def kds_chain_der(chip: ChipIdentity) -> tuple[bytes, bytes]:
    """(ASK, ARK) as X.509 DER, in the order of the KDS's cert_chain."""
    entry = _cache.get(chip.chip_id)
    if entry is None:
        ark_key, ask_key = chip.ark_key, chip.ask_key
        ark_name, ask_name = amd_name(f"ARK-{PRODUCT}"), amd_name(f"SEV-{PRODUCT}")
        ark_ski = x509.SubjectKeyIdentifier.from_public_key(ark_key.public_key())
        ark = (_base(ark_name, ark_name, ark_key.public_key(), _ARK_SERIAL)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                            False), critical=True)
               .add_extension(ark_ski, critical=False)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
        ask = (_base(ask_name, ark_name, ask_key.public_key(), _ASK_SERIAL)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ask_key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ark_ski),
                              critical=False)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, False, False,
                                            False), critical=True))
        entry = (sign_pss_der(ask, ark_key), sign_pss_der(ark, ark_key))
        _cache[chip.chip_id] = entry
    return entry


def _base(subject: x509.Name, issuer: x509.Name, key: rsa.RSAPublicKey,
          serial: int) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key)
            .serial_number(serial).not_valid_before(KDS_NOT_BEFORE).not_valid_after(KDS_NOT_AFTER))


def sign_pss_der(builder: x509.CertificateBuilder, key: rsa.RSAPrivateKey) -> bytes:
    """`builder` signed by `key` with RSASSA-PSS (SHA-384, MGF1 SHA-384, salt 48), as DER, with a
    salt derived from the key and the to-be-signed bytes: the same input, the same certificate.

    The library signs first (it writes the algorithm parameters and a signature of the final
    length); the signature, the last bytes of the DER, is then replaced by the deterministic one
    and checked with the public key before it leaves."""
    pss = padding.PSS(padding.MGF1(hashes.SHA384()), _SALT_LEN)
    der = builder.sign(key, hashes.SHA384(), rsa_padding=pss).public_bytes(Encoding.DER)
    cert = x509.load_der_x509_certificate(der)
    tbs, nbytes = cert.tbs_certificate_bytes, (key.key_size + 7) // 8
    if len(cert.signature) != nbytes or not der.endswith(cert.signature):
        raise ValueError("unexpected certificate layout")
    priv = key.private_numbers()
    salt = hmac.new(priv.d.to_bytes(nbytes, "big"), tbs, hashlib.sha384).digest()[:_SALT_LEN]
    m = int.from_bytes(_emsa_pss_encode(tbs, salt, key.key_size - 1), "big")
    # RSASP1 with the CRT (RFC 8017 5.1.2).
    m1, m2 = pow(m, priv.dmp1, priv.p), pow(m, priv.dmq1, priv.q)
    sig = (m2 + (priv.iqmp * (m1 - m2) % priv.p) * priv.q).to_bytes(nbytes, "big")
    try:
        key.public_key().verify(sig, tbs, pss, hashes.SHA384())
    except InvalidSignature:
        raise ValueError("deterministic PSS signature does not verify") from None
    return der[:-nbytes] + sig


def _mgf1_sha384(seed: bytes, length: int) -> bytes:
    out = b"".join(hashlib.sha384(seed + i.to_bytes(4, "big")).digest()
                   for i in range((length + 47) // 48))
    return out[:length]


def _emsa_pss_encode(message: bytes, salt: bytes, em_bits: int) -> bytes:
    """EMSA-PSS-ENCODE with SHA-384 and MGF1 SHA-384 (RFC 8017 9.1.1)."""
    em_len = (em_bits + 7) // 8
    h = hashlib.sha384(bytes(8) + hashlib.sha384(message).digest() + salt).digest()
    db = bytes(em_len - len(salt) - len(h) - 2) + b"\x01" + salt
    masked = bytearray(a ^ b for a, b in zip(db, _mgf1_sha384(h, len(db))))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    return bytes(masked) + h + b"\xbc"
