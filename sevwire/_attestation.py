"""The legacy SEV ATTESTATION report (command 0x36; sev-reference 8): 208 bytes.

mnonce[16] @0, launch_digest[32] @0x10, policy u32 @0x30, sig_usage u32 @0x34, sig_algo u32
@0x38, reserved u32 @0x3C, R[72] @0x40, S[72] @0x88 (little-endian). The PEK signs bytes
0x00-0x33 with ECDSA P-384/SHA-256, so anyone with the verified PEK can check which digest a
running guest was launched with, bound to the caller's fresh mnonce.
"""

from __future__ import annotations

import dataclasses
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from sevwire._bytes import int_to_le, le_to_int, require_bytes, require_len
from sevwire._errors import FieldRangeError, SignatureError
from sevwire._sevcert import Algo, SevCert, Usage

__all__ = ["ATTESTATION_REPORT_SIZE", "ATTESTATION_SIGNED_LEN", "AttestationReport",
           "sign_attestation_report", "verify_attestation_report"]

ATTESTATION_REPORT_SIZE = 208
ATTESTATION_SIGNED_LEN = 0x34
_FORMAT = struct.Struct("<16s32sIIII72s72s")


@dataclasses.dataclass(frozen=True)
class AttestationReport:
    """A decoded report; `r`/`s` are the raw little-endian 72-byte fields."""

    mnonce: bytes
    launch_digest: bytes
    policy: int
    sig_usage: int = Usage.PEK
    sig_algo: int = Algo.ECDSA_SHA256
    r: bytes = bytes(72)
    s: bytes = bytes(72)
    reserved: int = 0

    def encode(self) -> bytes:
        require_bytes(self.mnonce, 16, "report mnonce")
        require_bytes(self.launch_digest, 32, "report launch_digest")
        require_bytes(self.r, 72, "report R")
        require_bytes(self.s, 72, "report S")
        try:
            return _FORMAT.pack(self.mnonce, self.launch_digest, self.policy, self.sig_usage,
                                self.sig_algo, self.reserved, self.r, self.s)
        except struct.error:
            raise FieldRangeError("attestation report: policy, usage and algo must be u32") from None

    @classmethod
    def decode(cls, buf: bytes) -> AttestationReport:
        buf = require_len(buf, ATTESTATION_REPORT_SIZE, "attestation report")
        mnonce, digest, policy, usage, algo, reserved, r, s = _FORMAT.unpack(buf)
        return cls(mnonce, digest, policy, usage, algo, r, s, reserved)

    def signed_bytes(self) -> bytes:
        """Bytes 0x00-0x33: mnonce, launch digest and policy."""
        return self.encode()[:ATTESTATION_SIGNED_LEN]


def sign_attestation_report(report: AttestationReport, pek_private_key: ec.EllipticCurvePrivateKey) -> AttestationReport:
    """`report` signed by the PEK (usage PEK, ECDSA-SHA256)."""
    r, s = decode_dss_signature(pek_private_key.sign(report.signed_bytes(), ec.ECDSA(hashes.SHA256())))
    return dataclasses.replace(report, sig_usage=int(Usage.PEK), sig_algo=int(Algo.ECDSA_SHA256),
                               r=int_to_le(r, 72, "R"), s=int_to_le(s, 72, "S"))


def verify_attestation_report(report: AttestationReport | bytes,
                              pek: SevCert | ec.EllipticCurvePublicKey) -> AttestationReport:
    """Check the PEK's signature; returns the decoded report or raises SignatureError."""
    if not isinstance(report, AttestationReport):
        report = AttestationReport.decode(report)
    key = pek.public_key() if isinstance(pek, SevCert) else pek
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError("the attestation signer must be an EC key (the PEK)")
    if report.sig_usage != Usage.PEK or report.sig_algo != Algo.ECDSA_SHA256:
        raise SignatureError(f"attestation report signed with usage 0x{report.sig_usage:x} / "
                             f"algo 0x{report.sig_algo:x}, expected PEK / ECDSA-SHA256")
    sig = encode_dss_signature(le_to_int(report.r), le_to_int(report.s))
    try:
        key.verify(sig, report.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureError("attestation report signature does not verify") from None
    return report
