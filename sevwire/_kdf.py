"""The session key derivation (sev-reference 7): NIST SP 800-108 in counter mode with
HMAC-SHA256, in AMD's byte order.

block_i = HMAC(key, i u32LE || label || 0x00 || context || L u32LE), i = 1, 2, ...; the output is
the blocks concatenated and cut to L bits. The counter and L are little-endian, unlike the
big-endian encoding of `cryptography`'s KBKDFHMAC, which is why this is written out here.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from sevwire._errors import FieldRangeError

__all__ = ["kdf_counter_hmac_sha256", "derive_master", "derive_kek", "derive_kik",
           "LABEL_MASTER", "LABEL_KEK", "LABEL_KIK"]

LABEL_MASTER = b"sev-master-secret"
LABEL_KEK = b"sev-kek"
LABEL_KIK = b"sev-kik"


def kdf_counter_hmac_sha256(key: bytes, label: bytes, context: bytes, length_bits: int) -> bytes:
    """SP 800-108 counter-mode KDF with HMAC-SHA256, counter and L as u32 little-endian."""
    if length_bits <= 0 or length_bits % 8:
        raise FieldRangeError(f"KDF output length must be a positive number of bytes, not {length_bits} bits")
    out = b""
    counter = 1
    while len(out) * 8 < length_bits:
        msg = struct.pack("<I", counter) + label + b"\0" + context + struct.pack("<I", length_bits)
        out += hmac.new(key, msg, hashlib.sha256).digest()
        counter += 1
    return out[:length_bits // 8]


def derive_master(z: bytes, nonce: bytes) -> bytes:
    """master = KDF(Z, "sev-master-secret", NONCE, 128): Z is the ECDH shared x-coordinate."""
    return kdf_counter_hmac_sha256(z, LABEL_MASTER, nonce, 128)


def derive_kek(master: bytes) -> bytes:
    """KEK = KDF(master, "sev-kek", empty, 128): encrypts TEK||TIK in the session blob."""
    return kdf_counter_hmac_sha256(master, LABEL_KEK, b"", 128)


def derive_kik(master: bytes) -> bytes:
    """KIK = KDF(master, "sev-kik", empty, 128): authenticates the wrapped TEK||TIK."""
    return kdf_counter_hmac_sha256(master, LABEL_KIK, b"", 128)
