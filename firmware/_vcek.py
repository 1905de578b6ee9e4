"""The emulated VCEK (es-snp-reference 4.4): the chip's P-384 attestation key for one TCB.

On real parts the VCEK is derived inside the PSP from a fused chip secret and the TCB, and AMD's
key server certifies it with the ASK. Here it is derived from the chip's fused CEK key with HKDF
and the TCB, so it is stable per chip and TCB, needs no new field in the PSP state file, and a
new TCB gives a new key (the property that makes a TCB rollback visible to the verifier).

The certificate is the real format: X.509 v3 signed by the ASK with RSASSA-PSS/SHA-384, salt 48,
with AMD's extensions under 1.3.6.1.4.1.3704.1 (SPLs as DER INTEGERs, HWID = the 64-byte chip
id). The ASK and ARK themselves stay in the AMD binary certificate format of ask.cert and
ark.cert, so a verifier checks the VCEK's signature with the ASK's RSA key directly.
"""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sevwire import tcb_parts, tcb_version

from firmware._identity import ChipIdentity

__all__ = ["SNP_TCB", "VCEK_OID", "vcek_key", "vcek_cert_der"]

SNP_TCB = tcb_version(bl=3, tee=0, snp=8, ucode=115)
"""The TCB this emulated part reports as current, committed, reported and launch TCB."""
VCEK_OID = "1.3.6.1.4.1.3704.1"
_P384_ORDER = int("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
                  "581a0db248b0a77aecec196accc52973", 16)
_cache: dict[tuple[bytes, int], tuple[ec.EllipticCurvePrivateKey, bytes]] = {}


def vcek_key(chip: ChipIdentity, tcb: int = SNP_TCB) -> ec.EllipticCurvePrivateKey:
    """The chip's VCEK for `tcb` (deterministic)."""
    return _vcek(chip, tcb)[0]


def vcek_cert_der(chip: ChipIdentity, tcb: int = SNP_TCB) -> bytes:
    """The ASK-signed X.509 VCEK certificate (DER)."""
    return _vcek(chip, tcb)[1]


def _vcek(chip: ChipIdentity, tcb: int) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    entry = _cache.get((chip.chip_id, tcb))
    if entry is None:
        seed = chip.cek_key.private_numbers().private_value.to_bytes(48, "big")
        okm = HKDF(hashes.SHA384(), 64, salt=chip.chip_id,
                   info=b"SNP VCEK" + tcb.to_bytes(8, "little")).derive(seed)
        key = ec.derive_private_key(int.from_bytes(okm, "big") % (_P384_ORDER - 1) + 1,
                                    ec.SECP384R1())
        entry = (key, _certify(chip, key, tcb))
        _cache[(chip.chip_id, tcb)] = entry
    return entry


def _der_int(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return bytes([0x02, len(body)]) + body


def _certify(chip: ChipIdentity, key: ec.EllipticCurvePrivateKey, tcb: int) -> bytes:
    spl = tcb_parts(tcb)
    ext = [(".1", _der_int(1)), (".2", b"\x16\x08Milan-B0"),
           (".3.1", _der_int(spl["bl"])), (".3.2", _der_int(spl["tee"])),
           (".3.3", _der_int(spl["snp"])), (".3.8", _der_int(spl["ucode"])),
           (".4", chip.chip_id)]
    serial = int.from_bytes(hashlib.sha256(chip.chip_id + tcb.to_bytes(8, "little")).digest()[:16], "big") >> 1
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK")]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-Milan")]))
               .public_key(key.public_key())
               .serial_number(serial)
               .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
               .not_valid_after(datetime.datetime(2050, 1, 1, tzinfo=datetime.timezone.utc)))
    for suffix, value in ext:
        oid = x509.ObjectIdentifier(VCEK_OID + suffix)
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    ask: rsa.RSAPrivateKey = chip.ask_key
    cert = builder.sign(ask, hashes.SHA384(),
                        rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 48))
    return cert.public_bytes(Encoding.DER)
