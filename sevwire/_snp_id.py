"""The SNP ID block and its authentication structure (es-snp-reference 3.6): what the guest
owner signs offline and the hypervisor hands to SNP_LAUNCH_FINISH.

ID block (0x60 bytes, little-endian):

    0x00 ld[48]         the launch digest the guest must have been measured to
    0x30 family_id[16]  0x40 image_id[16]   (opaque to the firmware; copied into the report)
    0x50 version u32 (1)  0x54 guest_svn u32  0x58 policy u64 (must equal the launch policy)

ID authentication structure (4 KiB):

    0x000 id_key_algo u32   0x004 auth_key_algo u32 (1 = ECDSA P-384 with SHA-384)
    0x040 id_block_sig[0x200]   the ID key's signature over the 0x60-byte ID block
    0x240 id_key[0x404]         the ID key's public part
    0x680 id_key_sig[0x200]     the author key's signature over the 0x404-byte id_key
    0x880 author_key[0x404]     the author key's public part (zeros without one)

A public key is {curve u32 (2 = P-384), Qx[72] LE @0x04, Qy[72] LE @0x4C, zeros}; a signature
is {r[72] LE, s[72] LE @0x48, zeros} in its 512-byte slot. The report's ID_KEY_DIGEST and
AUTHOR_KEY_DIGEST are SHA-384 of the whole 0x404-byte key structures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from sevwire._bytes import int_to_le, le_to_int, require_bytes, require_len
from sevwire._errors import FieldRangeError, SignatureError

__all__ = [
    "ID_AUTH_SIZE", "ID_BLOCK_SIZE", "ID_BLOCK_VERSION", "ID_KEY_ALGO_ECDSA_P384_SHA384",
    "ID_KEY_CURVE_P384", "ID_KEY_SIZE", "ID_SIG_SIZE", "SnpIdAuth", "SnpIdBlock",
    "make_snp_id_auth", "snp_id_key", "snp_id_key_digest", "snp_id_sign", "snp_id_verify",
    "snp_public_key",
]

ID_BLOCK_SIZE = 0x60
ID_AUTH_SIZE = 0x1000
ID_KEY_SIZE = 0x404
ID_SIG_SIZE = 0x200
ID_BLOCK_VERSION = 1
ID_KEY_ALGO_ECDSA_P384_SHA384 = 1
ID_KEY_CURVE_P384 = 2
_COORD = 72  # Qx, Qy, r and s fields

_BLOCK = struct.Struct("<48s16s16sIIQ")
_OFF_ID_BLOCK_SIG, _OFF_ID_KEY, _OFF_ID_KEY_SIG, _OFF_AUTHOR_KEY = 0x40, 0x240, 0x680, 0x880


@dataclasses.dataclass(frozen=True)
class SnpIdBlock:
    """The 0x60-byte ID block."""

    ld: bytes
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    version: int = ID_BLOCK_VERSION
    guest_svn: int = 0
    policy: int = 0

    def encode(self) -> bytes:
        try:
            return _BLOCK.pack(require_bytes(self.ld, 48, "ID block ld"),
                               require_bytes(self.family_id, 16, "family_id"),
                               require_bytes(self.image_id, 16, "image_id"),
                               self.version, self.guest_svn, self.policy)
        except struct.error as exc:
            raise FieldRangeError(f"ID block: a field does not fit its width ({exc})") from None

    @classmethod
    def decode(cls, buf: bytes) -> SnpIdBlock:
        return cls(*_BLOCK.unpack(require_len(buf, ID_BLOCK_SIZE, "ID block")))


@dataclasses.dataclass(frozen=True)
class SnpIdAuth:
    """The 4 KiB ID authentication structure; keys and signatures are their raw wire fields."""

    id_key_algo: int
    auth_key_algo: int
    id_block_sig: bytes
    id_key: bytes
    id_key_sig: bytes = bytes(ID_SIG_SIZE)
    author_key: bytes = bytes(ID_KEY_SIZE)

    def encode(self) -> bytes:
        page = bytearray(ID_AUTH_SIZE)
        struct.pack_into("<II", page, 0, self.id_key_algo, self.auth_key_algo)
        page[_OFF_ID_BLOCK_SIG:_OFF_ID_BLOCK_SIG + ID_SIG_SIZE] = require_bytes(
            self.id_block_sig, ID_SIG_SIZE, "id_block_sig")
        page[_OFF_ID_KEY:_OFF_ID_KEY + ID_KEY_SIZE] = require_bytes(self.id_key, ID_KEY_SIZE, "id_key")
        page[_OFF_ID_KEY_SIG:_OFF_ID_KEY_SIG + ID_SIG_SIZE] = require_bytes(
            self.id_key_sig, ID_SIG_SIZE, "id_key_sig")
        page[_OFF_AUTHOR_KEY:_OFF_AUTHOR_KEY + ID_KEY_SIZE] = require_bytes(
            self.author_key, ID_KEY_SIZE, "author_key")
        return bytes(page)

    @classmethod
    def decode(cls, buf: bytes) -> SnpIdAuth:
        buf = require_len(buf, ID_AUTH_SIZE, "ID authentication structure")
        id_algo, auth_algo = struct.unpack_from("<II", buf, 0)
        return cls(id_algo, auth_algo,
                   buf[_OFF_ID_BLOCK_SIG:_OFF_ID_BLOCK_SIG + ID_SIG_SIZE],
                   buf[_OFF_ID_KEY:_OFF_ID_KEY + ID_KEY_SIZE],
                   buf[_OFF_ID_KEY_SIG:_OFF_ID_KEY_SIG + ID_SIG_SIZE],
                   buf[_OFF_AUTHOR_KEY:_OFF_AUTHOR_KEY + ID_KEY_SIZE])


def _p384(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> ec.EllipticCurvePublicKey:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise SignatureError("ID and author keys must be ECDSA P-384 keys")
    return key


def snp_id_key(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> bytes:
    """The 0x404-byte public key structure of a P-384 key (private keys give their public part)."""
    numbers = _p384(key).public_numbers()
    out = bytearray(ID_KEY_SIZE)
    struct.pack_into("<I", out, 0, ID_KEY_CURVE_P384)
    out[4:4 + _COORD] = int_to_le(numbers.x, _COORD, "Qx")
    out[4 + _COORD:4 + 2 * _COORD] = int_to_le(numbers.y, _COORD, "Qy")
    return bytes(out)


def snp_public_key(field: bytes) -> ec.EllipticCurvePublicKey:
    """The P-384 key in a 0x404-byte key structure; SignatureError for another curve or a point
    that is not on P-384 (the firmware answers both with BAD_SIGNATURE)."""
    field = require_len(field, ID_KEY_SIZE, "public key structure")
    (curve,) = struct.unpack_from("<I", field, 0)
    if curve != ID_KEY_CURVE_P384:
        raise SignatureError(f"public key curve {curve} is not P-384 ({ID_KEY_CURVE_P384})")
    x = le_to_int(field[4:4 + _COORD])
    y = le_to_int(field[4 + _COORD:4 + 2 * _COORD])
    try:
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1()).public_key()
    except ValueError:
        raise SignatureError("public key is not a point on P-384") from None


def snp_id_key_digest(field: bytes) -> bytes:
    """SHA-384 of a 0x404-byte key structure (the report's ID_KEY_DIGEST / AUTHOR_KEY_DIGEST)."""
    return hashlib.sha384(require_len(field, ID_KEY_SIZE, "public key structure")).digest()


def snp_id_sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA P-384/SHA-384 over `message`, as a 512-byte {r LE, s LE} signature slot."""
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp384r1":
        raise SignatureError("ID and author keys must be ECDSA P-384 keys")
    r, s = decode_dss_signature(key.sign(bytes(message), ec.ECDSA(hashes.SHA384())))
    return (int_to_le(r, _COORD, "r") + int_to_le(s, _COORD, "s")).ljust(ID_SIG_SIZE, b"\0")


def snp_id_verify(key_field: bytes, sig_field: bytes, message: bytes) -> None:
    """Check a 512-byte signature slot over `message` with a 0x404-byte key structure; a
    SignatureError says why it does not verify."""
    key = snp_public_key(key_field)
    sig_field = require_len(sig_field, ID_SIG_SIZE, "signature")
    r, s = le_to_int(sig_field[:_COORD]), le_to_int(sig_field[_COORD:2 * _COORD])
    try:
        key.verify(encode_dss_signature(r, s), bytes(message), ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise SignatureError("the signature does not verify") from None


def make_snp_id_auth(id_block: bytes, id_key: ec.EllipticCurvePrivateKey,
                     author_key: ec.EllipticCurvePrivateKey | None = None) -> SnpIdAuth:
    """The ID authentication structure for an encoded ID block: signed by `id_key` and, when an
    `author_key` is given, the ID key's structure signed by it (else those fields stay zero)."""
    block = require_len(id_block, ID_BLOCK_SIZE, "ID block")
    id_field = snp_id_key(id_key)
    auth = SnpIdAuth(ID_KEY_ALGO_ECDSA_P384_SHA384, 0, snp_id_sign(id_key, block), id_field)
    if author_key is None:
        return auth
    return dataclasses.replace(auth, auth_key_algo=ID_KEY_ALGO_ECDSA_P384_SHA384,
                               id_key_sig=snp_id_sign(author_key, id_field),
                               author_key=snp_id_key(author_key))
