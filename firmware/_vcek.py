"""The emulated VCEK (es-snp-reference 4.4): the chip's P-384 attestation key for one TCB.

On real parts the VCEK is derived inside the PSP from a fused chip secret and the TCB, and AMD's
key server certifies it with the ASK. Here it is derived from the chip's fused CEK key with HKDF
and the TCB, so it is stable per chip and TCB, needs no new field in the PSP state file, and a
new TCB gives a new key (the property that makes a TCB rollback visible to the verifier).

The certificate is the real format: X.509 v3 signed by the ASK with RSASSA-PSS/SHA-384, salt 48,
issued by AMD's SEV-Milan name to SEV-VCEK (the names of firmware._kds), with AMD's extensions
under 1.3.6.1.4.1.3704.1 in AMD's order: struct version, product name, the eight SPLs of the TCB
as DER INTEGERs (.3.1 BL, .3.2 TEE, .3.4-.3.7 the reserved TCB bytes 2-5, .3.3 SNP, .3.8
microcode), HWID = the 64-byte chip id. Its issuer is the ASK of ask.cert (AMD format) and of
ask.pem (X.509, firmware._kds): one key in two formats.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sevwire import tcb_version

from firmware._identity import ChipIdentity
from firmware._kds import KDS_NOT_AFTER, KDS_NOT_BEFORE, PRODUCT, amd_name, sign_pss_der

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
    tcb_bytes = tcb.to_bytes(8, "little")
    spl = [(f".3.{n}", _der_int(tcb_bytes[i])) for n, i in
           ((1, 0), (2, 1), (4, 2), (5, 3), (6, 4), (7, 5), (3, 6), (8, 7))]
    product = f"{PRODUCT}-B0".encode()  # an IA5String
    ext = [(".1", _der_int(1)), (".2", bytes([0x16, len(product)]) + product), *spl,
           (".4", chip.chip_id)]
    serial = int.from_bytes(hashlib.sha256(chip.chip_id + tcb_bytes).digest()[:16], "big") >> 1
    builder = (x509.CertificateBuilder()
               .subject_name(amd_name("SEV-VCEK"))
               .issuer_name(amd_name(f"SEV-{PRODUCT}"))
               .public_key(key.public_key())
               .serial_number(serial)
               .not_valid_before(KDS_NOT_BEFORE)
               .not_valid_after(KDS_NOT_AFTER))
    for suffix, value in ext:
        oid = x509.ObjectIdentifier(VCEK_OID + suffix)
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return sign_pss_der(builder, chip.ask_key)
