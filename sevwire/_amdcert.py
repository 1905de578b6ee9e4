"""The AMD certificate (ARK and ASK; sev-reference 7).

A 64-byte header (version, key_id, certifying_id, key_usage, reserved, pubexp_bits, modulus_bits)
followed by the public exponent, the modulus and the signature, each `bits/8` bytes and
little-endian: 832 bytes at 2048 bits (Naples), 1600 bytes at 4096 bits (Rome and later).
The signature is RSA-PSS over header||pubexp||modulus with MGF1 and salt = hash length: SHA-384
at 4096 bits, SHA-256 at 2048 bits. An ARK is self-signed (certifying_id == key_id); an ASK's
certifying_id names the ARK, which is how a verifier refuses an ASK presented with the wrong ARK.
"""

from __future__ import annotations

import dataclasses
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sevwire._bytes import int_to_le, le_to_int, require_bytes
from sevwire._errors import BufferLengthError, CertificateError, FieldRangeError, SignatureError

__all__ = [
    "AMD_CERT_HEADER_SIZE",
    "AMD_CERT_VERSION",
    "AmdCert",
    "amd_pss_hash",
    "sign_amd_cert",
    "verify_amd_cert",
    "split_amd_chain",
]

AMD_CERT_HEADER_SIZE = 64
AMD_CERT_VERSION = 1
_HEADER = struct.Struct("<I16s16sI16sII")
_BIT_SIZES = (2048, 4096)


def amd_pss_hash(modulus_bits: int) -> hashes.HashAlgorithm:
    """The PSS hash for an AMD key size: SHA-384 at 4096 bits, SHA-256 at 2048 bits."""
    if modulus_bits == 4096:
        return hashes.SHA384()
    if modulus_bits == 2048:
        return hashes.SHA256()
    raise CertificateError(f"AMD certificate key size {modulus_bits} is not 2048 or 4096 bits")


@dataclasses.dataclass(frozen=True)
class AmdCert:
    """A decoded ARK or ASK. `pubexp`/`modulus` are integers; `signature` is the raw
    little-endian field (all zero while unsigned)."""

    key_id: bytes
    certifying_id: bytes
    key_usage: int
    pubexp_bits: int
    modulus_bits: int
    pubexp: int
    modulus: int
    signature: bytes
    version: int = AMD_CERT_VERSION
    reserved: bytes = bytes(16)

    @classmethod
    def from_public_key(cls, key: rsa.RSAPublicKey, key_usage: int, key_id: bytes,
                        certifying_id: bytes | None = None) -> AmdCert:
        """An unsigned AMD certificate; `certifying_id` defaults to `key_id` (self-signed ARK)."""
        bits = key.key_size
        if bits not in _BIT_SIZES:
            raise CertificateError(f"AMD certificate key size {bits} is not 2048 or 4096 bits")
        key_id = require_bytes(key_id, 16, "key_id")
        certifying_id = key_id if certifying_id is None else require_bytes(certifying_id, 16, "certifying_id")
        nums = key.public_numbers()
        return cls(key_id, certifying_id, int(key_usage), bits, bits, nums.e, nums.n, bytes(bits // 8))

    @property
    def size(self) -> int:
        return AMD_CERT_HEADER_SIZE + self.pubexp_bits // 8 + 2 * (self.modulus_bits // 8)

    @staticmethod
    def size_from_header(buf: bytes) -> int:
        """Total length implied by a header (used to split an ASK||ARK chain)."""
        if len(buf) < AMD_CERT_HEADER_SIZE:
            raise BufferLengthError(f"AMD certificate: header needs {AMD_CERT_HEADER_SIZE} bytes, got {len(buf)}")
        *_, pubexp_bits, modulus_bits = _HEADER.unpack_from(buf, 0)
        for name, bits in (("pubexp_bits", pubexp_bits), ("modulus_bits", modulus_bits)):
            if bits == 0 or bits % 8 or bits > 4096:
                raise CertificateError(f"AMD certificate {name} = {bits} is not a byte size up to 4096")
        return AMD_CERT_HEADER_SIZE + pubexp_bits // 8 + 2 * (modulus_bits // 8)

    @classmethod
    def decode(cls, buf: bytes) -> AmdCert:
        """Parse one certificate of exactly the length its header implies."""
        buf = bytes(buf)
        size = cls.size_from_header(buf)
        if len(buf) != size:
            raise BufferLengthError(f"AMD certificate: header implies {size} bytes, got {len(buf)}")
        version, key_id, cert_id, usage, reserved, e_bits, n_bits = _HEADER.unpack_from(buf, 0)
        if version != AMD_CERT_VERSION:
            raise CertificateError(f"AMD certificate version {version}, expected {AMD_CERT_VERSION}")
        off = AMD_CERT_HEADER_SIZE
        pubexp = le_to_int(buf[off:off + e_bits // 8])
        off += e_bits // 8
        modulus = le_to_int(buf[off:off + n_bits // 8])
        off += n_bits // 8
        signature = buf[off:off + n_bits // 8]
        return cls(key_id, cert_id, usage, e_bits, n_bits, pubexp, modulus, signature, version, reserved)

    def signed_bytes(self) -> bytes:
        """header || pubexp || modulus: what the signature covers."""
        try:
            header = _HEADER.pack(self.version, self.key_id, self.certifying_id, self.key_usage,
                                  self.reserved, self.pubexp_bits, self.modulus_bits)
        except struct.error as exc:
            raise FieldRangeError(f"AMD certificate header field out of range ({exc})") from None
        if len(self.key_id) != 16 or len(self.certifying_id) != 16 or len(self.reserved) != 16:
            raise FieldRangeError("AMD certificate ids and reserved field must be 16 bytes")
        return (header + int_to_le(self.pubexp, self.pubexp_bits // 8, "pubexp")
                + int_to_le(self.modulus, self.modulus_bits // 8, "modulus"))

    def encode(self) -> bytes:
        """The wire form."""
        if len(self.signature) != self.modulus_bits // 8:
            raise FieldRangeError(f"AMD certificate signature must be {self.modulus_bits // 8} bytes")
        return self.signed_bytes() + self.signature

    def public_key(self) -> rsa.RSAPublicKey:
        """The certified RSA key; a CertificateError if the numbers are not a valid key."""
        try:
            return rsa.RSAPublicNumbers(self.pubexp, self.modulus).public_key()
        except ValueError:
            raise CertificateError("AMD certificate RSA key is invalid") from None

    @property
    def self_signed(self) -> bool:
        return self.key_id == self.certifying_id


def _pss(hash_alg: hashes.HashAlgorithm) -> padding.PSS:
    return padding.PSS(padding.MGF1(hash_alg), hash_alg.digest_size)


def sign_amd_cert(cert: AmdCert, signer_key: rsa.RSAPrivateKey) -> AmdCert:
    """`cert` signed by `signer_key` (the ARK's key for both ARK and ASK)."""
    if signer_key.key_size != cert.modulus_bits:
        raise CertificateError(f"signer key of {signer_key.key_size} bits cannot fill a "
                               f"{cert.modulus_bits}-bit signature field")
    hash_alg = amd_pss_hash(signer_key.key_size)
    sig = signer_key.sign(cert.signed_bytes(), _pss(hash_alg), hash_alg)
    return dataclasses.replace(cert, signature=sig[::-1])


def verify_amd_cert(cert: AmdCert, signer: AmdCert | rsa.RSAPublicKey) -> None:
    """Check `cert`'s signature. With an AmdCert signer, also check that cert.certifying_id names
    it: an ASK signed by some other ARK must fail even before the signature is tried."""
    if isinstance(signer, AmdCert):
        if cert.certifying_id != signer.key_id:
            raise SignatureError("certifying_id does not match the signer's key_id")
        key = signer.public_key()
    else:
        key = signer
    hash_alg = amd_pss_hash(key.key_size)
    try:
        key.verify(cert.signature[::-1], cert.signed_bytes(), _pss(hash_alg), hash_alg)
    except InvalidSignature:
        raise SignatureError("AMD certificate signature does not verify") from None


def split_amd_chain(buf: bytes) -> list[AmdCert]:
    """Split concatenated AMD certificates (SEND_START's ASK||ARK)."""
    buf = bytes(buf)
    certs = []
    while buf:
        size = AmdCert.size_from_header(buf)
        if len(buf) < size:
            raise BufferLengthError(f"AMD certificate chain truncated: need {size} bytes, have {len(buf)}")
        certs.append(AmdCert.decode(buf[:size]))
        buf = buf[size:]
    return certs


