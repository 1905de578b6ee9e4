"""Releasing a secret to an attested SEV-SNP guest (docs/guest-abi.md, "Secret release").

SNP has no LAUNCH_SECRET: the guest owner hands its secret to the running guest instead, after
the guest proved what it is. The guest puts the public half of an ephemeral X25519 key into its
attestation report (report_data[0:32], bytes 32..63 zero); the PSP signs the report with the
VCEK, so the key is bound to the launch measurement and policy of exactly that guest. The owner
checks the report as `hv owner verify-report` does (`verify_snp_report_chain`: one piece of code
for both), and only then makes an ephemeral X25519 key of its own and encrypts the secret:

    shared = X25519(owner_private, guest_public)              (all zeros: refused)
    key    = SHA-256("hv-secret-release-v1" || shared || guest_public || owner_public)
    ciphertext, tag = AES-256-GCM(key, random 12-byte IV, secret, no additional data)

The hypervisor carries the report in and the answer out, and sees only public keys, the signed
report and ciphertext. A report from any other image, policy or chip gets a refusal; changing
report_data breaks the VCEK's signature, so the host cannot substitute a key of its own.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import sevwire
from hv.owner._errors import OwnerCheckFailed, OwnerInputError
from hv.owner._snp_report import SnpChain, verify_snp_report_chain

__all__ = ["RELEASE_ANSWER_FIELDS", "RELEASE_LABEL", "SNP_MAX_SECRET", "release_key",
           "release_secret"]

RELEASE_LABEL = b"hv-secret-release-v1"
SNP_MAX_SECRET = 4096
"""The guest ABI's release block carries at most one page of ciphertext."""

RELEASE_ANSWER_FIELDS = ("owner_pub", "iv", "ciphertext", "tag")


def release_key(shared: bytes, guest_pub: bytes, owner_pub: bytes) -> bytes:
    """The AES-256-GCM key both sides derive from the X25519 result and the two public keys."""
    return hashlib.sha256(RELEASE_LABEL + shared + guest_pub + owner_pub).digest()


def release_secret(report: bytes, chain: str | os.PathLike | Mapping[str, bytes] | SnpChain,
                   expected_measurement: bytes, secret: bytes, *,
                   expected_policy: int | None = None, id_key_digest: bytes | None = None) -> dict:
    """{"owner_pub", "iv", "ciphertext", "tag"} (hex) encrypting `secret` to the X25519 key in
    the report's report_data, or {"refuse": one-line reason}.

    `report` is the 1184-byte report as the guest handed it over; `chain` a directory holding
    ark.cert, ask.cert and vcek.der (`hv psp export`), or cert_chain.pem and vcek.pem, or a
    mapping of those names to their bytes (`read_snp_chain`).
    The report must verify against the chain, carry `expected_measurement` (48 bytes: `hv owner
    measure --snp`) and, when given, `expected_policy`, and have report_data[32:64] zero. Unusable
    input (a report of the wrong size, an unreadable certificate, a secret outside 1..4096 bytes)
    raises OwnerInputError. With `id_key_digest` (SHA-384 of the owner's ID key structure) the
    guest must also have been launched with an ID block signed by that key."""
    if not isinstance(report, (bytes, bytearray, memoryview)):
        raise OwnerInputError("report must be bytes")
    report = bytes(report)
    if len(report) != sevwire.SNP_REPORT_SIZE:
        raise OwnerInputError(f"report: expected {sevwire.SNP_REPORT_SIZE} bytes, got {len(report)}")
    if not isinstance(expected_measurement, (bytes, bytearray)) or len(expected_measurement) != 48:
        raise OwnerInputError("expected measurement must be 48 bytes (the SNP launch digest)")
    if not isinstance(secret, (bytes, bytearray)) or not 1 <= len(secret) <= SNP_MAX_SECRET:
        size = len(secret) if isinstance(secret, (bytes, bytearray)) else "not"
        raise OwnerInputError(f"secret is {size} bytes; a released secret is 1..{SNP_MAX_SECRET} bytes")
    if expected_policy is not None and (isinstance(expected_policy, bool) or not isinstance(expected_policy, int)
                                        or not 0 <= expected_policy < 1 << 64):
        raise OwnerInputError("expected policy must be a 64-bit unsigned integer")
    try:
        check = verify_snp_report_chain(report, chain, measurement=bytes(expected_measurement),
                                        policy=expected_policy, id_key_digest=id_key_digest)
    except OwnerCheckFailed as exc:
        return {"refuse": str(exc)}
    report_data = check.report.report_data
    if report_data[32:] != bytes(32):
        return {"refuse": "report REJECTED at report_data: bytes 32..63 are not zero (report_data "
                          "must be the guest's X25519 public key and 32 zero bytes)"}
    guest_pub = report_data[:32]
    owner_key = X25519PrivateKey.generate()
    owner_pub = owner_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        shared = owner_key.exchange(X25519PublicKey.from_public_bytes(guest_pub))
    except ValueError:  # OpenSSL refuses small-order points: the result would be all zeros
        shared = bytes(32)
    if shared == bytes(32):
        return {"refuse": "the guest's X25519 public key gives an all-zero shared secret"}
    iv = os.urandom(12)
    sealed = AESGCM(release_key(shared, guest_pub, owner_pub)).encrypt(iv, bytes(secret), None)
    return {"owner_pub": owner_pub.hex(), "iv": iv.hex(), "ciphertext": sealed[:-16].hex(),
            "tag": sealed[-16:].hex()}
