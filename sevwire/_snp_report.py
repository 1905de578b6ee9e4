"""The SEV-SNP attestation report (es-snp-reference 4.3): 1184 (0x4A0) bytes, signed over
0x000-0x29F with ECDSA P-384/SHA-384 by the chip's VCEK, r and s little-endian in 72-byte fields.

Only the fields the firmware fills and the owner checks get names here; the rest of the signed
range (CPUID bytes, mitigation vectors, reserved) is kept as raw bytes so decode(encode(x))
is exact and a flipped byte anywhere in the signed range breaks the signature.
"""

from __future__ import annotations

import dataclasses
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from sevwire._bytes import int_to_le, le_to_int, require_bytes, require_len
from sevwire._errors import SignatureError

__all__ = ["SNP_REPORT_SIZE", "SNP_REPORT_SIGNED_LEN", "SNP_REPORT_VERSION", "SnpReport",
           "sign_snp_report", "verify_snp_report", "tcb_version", "tcb_parts"]

SNP_REPORT_SIZE = 0x4A0
SNP_REPORT_SIGNED_LEN = 0x2A0
SNP_REPORT_VERSION = 2
SIG_ALGO_ECDSA_P384_SHA384 = 1
_FIXED = struct.Struct("<IIQ16s16sIIQQI4x64s48s32s48s48s32s32sQ24x64sQ")  # 0x000-0x1E7
_CUR_BUILD = 0x1E8


def tcb_version(bl: int, tee: int, snp: int, ucode: int) -> int:
    """TCB_VERSION (Milan/Genoa layout): byte 0 BL, 1 TEE, 6 SNP, 7 microcode."""
    return bl | tee << 8 | snp << 48 | ucode << 56


def tcb_parts(tcb: int) -> dict[str, int]:
    return {"bl": tcb & 0xFF, "tee": (tcb >> 8) & 0xFF, "snp": (tcb >> 48) & 0xFF,
            "ucode": (tcb >> 56) & 0xFF}


@dataclasses.dataclass(frozen=True)
class SnpReport:
    """A decoded report; `r`/`s` are the raw little-endian 72-byte fields."""

    policy: int
    report_data: bytes
    measurement: bytes
    chip_id: bytes
    current_tcb: int
    host_data: bytes = bytes(32)
    report_id: bytes = bytes(32)
    report_id_ma: bytes = b"\xff" * 32
    version: int = SNP_REPORT_VERSION
    guest_svn: int = 0
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    vmpl: int = 0
    signature_algo: int = SIG_ALGO_ECDSA_P384_SHA384
    platform_info: int = 0
    key_info: int = 0  # author_key_en [0], mask_chip_key [1], signing_key [4:2] (0 = VCEK)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    reported_tcb: int | None = None
    committed_tcb: int | None = None
    launch_tcb: int | None = None
    builds: bytes = bytes(8)  # current build/minor/major, rsvd, committed build/minor/major, rsvd
    r: bytes = bytes(72)
    s: bytes = bytes(72)

    def encode(self) -> bytes:
        cur = self.current_tcb
        fixed = _FIXED.pack(
            self.version, self.guest_svn, self.policy,
            require_bytes(self.family_id, 16, "family_id"), require_bytes(self.image_id, 16, "image_id"),
            self.vmpl, self.signature_algo, cur, self.platform_info, self.key_info,
            require_bytes(self.report_data, 64, "report_data"),
            require_bytes(self.measurement, 48, "measurement"),
            require_bytes(self.host_data, 32, "host_data"),
            require_bytes(self.id_key_digest, 48, "id_key_digest"),
            require_bytes(self.author_key_digest, 48, "author_key_digest"),
            require_bytes(self.report_id, 32, "report_id"),
            require_bytes(self.report_id_ma, 32, "report_id_ma"),
            cur if self.reported_tcb is None else self.reported_tcb,
            require_bytes(self.chip_id, 64, "chip_id"),
            cur if self.committed_tcb is None else self.committed_tcb)
        body = bytearray(SNP_REPORT_SIZE)
        body[:len(fixed)] = fixed
        body[_CUR_BUILD:_CUR_BUILD + 8] = require_bytes(self.builds, 8, "builds")
        launch = cur if self.launch_tcb is None else self.launch_tcb
        body[0x1F0:0x1F8] = launch.to_bytes(8, "little")
        body[0x2A0:0x2E8] = require_bytes(self.r, 72, "signature r")
        body[0x2E8:0x330] = require_bytes(self.s, 72, "signature s")
        return bytes(body)

    @classmethod
    def decode(cls, buf: bytes) -> SnpReport:
        buf = require_len(buf, SNP_REPORT_SIZE, "SNP attestation report")
        (version, svn, policy, family, image, vmpl, algo, cur, pinfo, kinfo, rdata, meas, host,
         idk, authk, rid, rid_ma, reported, chip, committed) = _FIXED.unpack_from(buf)
        return cls(policy, rdata, meas, chip, cur, host, rid, rid_ma, version, svn, family, image,
                   vmpl, algo, pinfo, kinfo, idk, authk, reported, committed,
                   int.from_bytes(buf[0x1F0:0x1F8], "little"), buf[_CUR_BUILD:_CUR_BUILD + 8],
                   buf[0x2A0:0x2E8], buf[0x2E8:0x330])


def sign_snp_report(report: SnpReport, vcek_key: ec.EllipticCurvePrivateKey) -> bytes:
    """The encoded report with the VCEK's signature over bytes 0x000-0x29F."""
    unsigned = dataclasses.replace(report, signature_algo=SIG_ALGO_ECDSA_P384_SHA384,
                                   r=bytes(72), s=bytes(72)).encode()
    r, s = decode_dss_signature(vcek_key.sign(unsigned[:SNP_REPORT_SIGNED_LEN], ec.ECDSA(hashes.SHA384())))
    return unsigned[:0x2A0] + int_to_le(r, 72, "r") + int_to_le(s, 72, "s") + unsigned[0x330:]


def verify_snp_report(report: bytes, vcek: ec.EllipticCurvePublicKey) -> SnpReport:
    """Check the VCEK's signature over bytes 0x000-0x29F; the decoded report or SignatureError."""
    buf = require_len(report, SNP_REPORT_SIZE, "SNP attestation report")
    decoded = SnpReport.decode(buf)
    if decoded.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise SignatureError(f"report signature_algo {decoded.signature_algo} is not ECDSA P-384/SHA-384")
    if not isinstance(vcek, ec.EllipticCurvePublicKey) or vcek.curve.name != "secp384r1":
        raise SignatureError("the report signer must be a P-384 key (the VCEK)")
    sig = encode_dss_signature(le_to_int(decoded.r), le_to_int(decoded.s))
    try:
        vcek.verify(sig, buf[:SNP_REPORT_SIGNED_LEN], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SignatureError("report signature does not verify with the VCEK") from None
    return decoded
