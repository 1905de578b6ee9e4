"""The SEV certificate (sev-reference 7): 2084 bytes, little-endian, used for the CEK, OCA, PEK,
PDH and the guest owner's GODH.

Layout: version, api_major/minor, pubkey usage and algorithm, a 1028-byte public key (EC: curve id,
QX[72], QY[72]; RSA: modulus_bits, pubexp[512], modulus[512]) and two 520-byte signature slots
(usage, algorithm, 512 bytes: ECDSA R[72] S[72], or an RSA signature). Signatures cover bytes
0x000-0x413. Every big number is little-endian and zero-padded, the opposite of what
`cryptography` speaks, so conversions happen here and nowhere else.

The class keeps raw key and signature fields, so `decode(b).encode() == b` for any well-sized input:
verifying re-encodes, and a re-encoding that "cleaned up" padding would break a real signature.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from sevwire._amdcert import AmdCert
from sevwire._bytes import int_to_le, le_to_int, require_len
from sevwire._errors import CertificateError, FieldRangeError, SignatureError

__all__ = [
    "SEV_CERT_SIZE",
    "SEV_CERT_SIGNED_LEN",
    "SEV_CERT_VERSION",
    "Usage",
    "Algo",
    "Curve",
    "SigSlot",
    "SevCert",
    "sign_sev_cert",
    "verify_sev_cert",
    "split_cert_chain",
    "join_cert_chain",
]

SEV_CERT_SIZE = 0x824
SEV_CERT_SIGNED_LEN = 0x414
SEV_CERT_VERSION = 1
_KEY_LEN = 1028
_SIG_LEN = 512
_EC_COORD_LEN = 72
_RSA_FIELD_LEN = 512
_HEADER = struct.Struct("<IBB2sII")  # version, api_major, api_minor, reserved, usage, algo
_SLOT = struct.Struct("<II512s")


class Usage(enum.IntEnum):
    """Key usage codes (AMD sev-tool). NONE marks an empty signature slot."""

    ARK = 0x0000
    ASK = 0x0013
    NONE = 0x1000
    OCA = 0x1001
    PEK = 0x1002
    PDH = 0x1003
    CEK = 0x1004


class Algo(enum.IntEnum):
    """Key and signature algorithm codes (AMD sev-tool). NONE is an empty slot's algorithm."""

    NONE = 0x000
    RSA_SHA256 = 0x001
    ECDSA_SHA256 = 0x002
    ECDH_SHA256 = 0x003
    RSA_SHA384 = 0x101
    ECDSA_SHA384 = 0x102
    ECDH_SHA384 = 0x103


class Curve(enum.IntEnum):
    """EC curve ids in a SEV certificate's key field."""

    P256 = 1
    P384 = 2


_CURVES: dict[int, ec.EllipticCurve] = {Curve.P256: ec.SECP256R1(), Curve.P384: ec.SECP384R1()}
_RSA_ALGOS = (Algo.RSA_SHA256, Algo.RSA_SHA384)
_EC_ALGOS = (Algo.ECDSA_SHA256, Algo.ECDSA_SHA384, Algo.ECDH_SHA256, Algo.ECDH_SHA384)


def _hash_for(algo: int) -> hashes.HashAlgorithm:
    if algo in (Algo.RSA_SHA256, Algo.ECDSA_SHA256, Algo.ECDH_SHA256):
        return hashes.SHA256()
    if algo in (Algo.RSA_SHA384, Algo.ECDSA_SHA384, Algo.ECDH_SHA384):
        return hashes.SHA384()
    raise SignatureError(f"no hash for algorithm 0x{algo:x}")


@dataclasses.dataclass(frozen=True)
class SigSlot:
    """One signature slot: who signed (`usage`), how (`algo`) and the raw 512-byte field."""

    usage: int = Usage.NONE
    algo: int = Algo.NONE
    raw: bytes = bytes(_SIG_LEN)

    @property
    def empty(self) -> bool:
        """True for an unused slot (usage NONE or algorithm NONE, as real certificates mark it)."""
        return self.usage == Usage.NONE or self.algo == Algo.NONE


@dataclasses.dataclass(frozen=True)
class SevCert:
    """A decoded SEV certificate; `encode()` gives back the exact 2084 bytes."""

    version: int
    api_major: int
    api_minor: int
    pubkey_usage: int
    pubkey_algo: int
    pubkey_raw: bytes
    sig1: SigSlot = SigSlot()
    sig2: SigSlot = SigSlot()
    reserved: bytes = b"\0\0"

    # -- wire format ---------------------------------------------------------------------------
    @classmethod
    def decode(cls, buf: bytes) -> SevCert:
        """Parse 2084 bytes. Checks the version only; key checks happen in `public_key()`."""
        buf = require_len(buf, SEV_CERT_SIZE, "SEV certificate")
        version, major, minor, reserved, usage, algo = _HEADER.unpack_from(buf, 0)
        if version != SEV_CERT_VERSION:
            raise CertificateError(f"SEV certificate version {version}, expected {SEV_CERT_VERSION}")
        key = buf[0x010:0x010 + _KEY_LEN]
        slots = [SigSlot(*_SLOT.unpack_from(buf, off)) for off in (0x414, 0x61C)]
        return cls(version, major, minor, usage, algo, key, slots[0], slots[1], reserved)

    def encode(self) -> bytes:
        """The 2084-byte wire form."""
        if len(self.pubkey_raw) != _KEY_LEN:
            raise FieldRangeError(f"SEV certificate key field must be {_KEY_LEN} bytes")
        try:
            out = _HEADER.pack(self.version, self.api_major, self.api_minor, self.reserved,
                               self.pubkey_usage, self.pubkey_algo) + self.pubkey_raw
            for slot in (self.sig1, self.sig2):
                if len(slot.raw) != _SIG_LEN:
                    raise FieldRangeError(f"SEV certificate signature field must be {_SIG_LEN} bytes")
                out += _SLOT.pack(slot.usage, slot.algo, slot.raw)
        except struct.error as exc:
            raise FieldRangeError(f"SEV certificate field out of range ({exc})") from None
        assert len(out) == SEV_CERT_SIZE
        return out

    def signed_bytes(self) -> bytes:
        """Bytes 0x000-0x413: what both signature slots sign."""
        return self.encode()[:SEV_CERT_SIGNED_LEN]

    # -- keys ----------------------------------------------------------------------------------
    @classmethod
    def from_public_key(cls, key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, usage: int,
                        algo: int | None = None, api_major: int = 0, api_minor: int = 0) -> SevCert:
        """An unsigned certificate for `key`. The default algorithm is what real parts use:
        ECDH-SHA256 for a PDH, ECDSA-SHA256 for other EC keys, RSA-SHA256 for RSA keys."""
        if isinstance(key, ec.EllipticCurvePublicKey):
            curve = {"secp384r1": Curve.P384, "secp256r1": Curve.P256}.get(key.curve.name)
            if curve is None:
                raise CertificateError(f"curve {key.curve.name} has no SEV curve id")
            nums = key.public_numbers()
            raw = (struct.pack("<I", curve) + int_to_le(nums.x, _EC_COORD_LEN, "QX")
                   + int_to_le(nums.y, _EC_COORD_LEN, "QY"))
            if algo is None:
                algo = Algo.ECDH_SHA256 if usage == Usage.PDH else Algo.ECDSA_SHA256
        elif isinstance(key, rsa.RSAPublicKey):
            nums = key.public_numbers()
            if key.key_size > 8 * _RSA_FIELD_LEN:
                raise CertificateError(f"RSA key of {key.key_size} bits does not fit a SEV certificate")
            raw = (struct.pack("<I", key.key_size) + int_to_le(nums.e, _RSA_FIELD_LEN, "pubexp")
                   + int_to_le(nums.n, _RSA_FIELD_LEN, "modulus"))
            if algo is None:
                algo = Algo.RSA_SHA256
        else:
            raise CertificateError(f"unsupported public key type {type(key).__name__}")
        raw = raw.ljust(_KEY_LEN, b"\0")
        return cls(SEV_CERT_VERSION, api_major, api_minor, int(usage), int(algo), raw)

    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        """The certified public key; a CertificateError if the algorithm, curve or point is bad."""
        if self.pubkey_algo in _EC_ALGOS:
            curve_id = struct.unpack_from("<I", self.pubkey_raw, 0)[0]
            curve = _CURVES.get(curve_id)
            if curve is None:
                raise CertificateError(f"SEV certificate curve id {curve_id} is not 1 (P-256) or 2 (P-384)")
            x = le_to_int(self.pubkey_raw[4:4 + _EC_COORD_LEN])
            y = le_to_int(self.pubkey_raw[4 + _EC_COORD_LEN:4 + 2 * _EC_COORD_LEN])
            try:
                return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
            except ValueError:
                raise CertificateError("SEV certificate public key is not a point on its curve") from None
        if self.pubkey_algo in _RSA_ALGOS:
            bits = struct.unpack_from("<I", self.pubkey_raw, 0)[0]
            e = le_to_int(self.pubkey_raw[4:4 + _RSA_FIELD_LEN])
            n = le_to_int(self.pubkey_raw[4 + _RSA_FIELD_LEN:4 + 2 * _RSA_FIELD_LEN])
            if n.bit_length() != bits:
                raise CertificateError(f"SEV certificate modulus has {n.bit_length()} bits, header says {bits}")
            try:
                return rsa.RSAPublicNumbers(e, n).public_key()
            except ValueError:
                raise CertificateError("SEV certificate RSA key is invalid") from None
        raise CertificateError(f"SEV certificate key algorithm 0x{self.pubkey_algo:x} is unknown")

    @property
    def curve(self) -> int | None:
        """The curve id for an EC key, None for RSA."""
        if self.pubkey_algo in _EC_ALGOS:
            return struct.unpack_from("<I", self.pubkey_raw, 0)[0]
        return None

    def slots(self) -> tuple[SigSlot, SigSlot]:
        return (self.sig1, self.sig2)


# -- signatures --------------------------------------------------------------------------------

def _sign_raw(data: bytes, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, algo: int) -> bytes:
    hash_alg = _hash_for(algo)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if algo not in (Algo.ECDSA_SHA256, Algo.ECDSA_SHA384):
            raise SignatureError(f"an EC key cannot sign with algorithm 0x{algo:x}")
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hash_alg)))
        raw = int_to_le(r, _EC_COORD_LEN, "R") + int_to_le(s, _EC_COORD_LEN, "S")
    elif isinstance(key, rsa.RSAPrivateKey):
        if algo not in _RSA_ALGOS:
            raise SignatureError(f"an RSA key cannot sign with algorithm 0x{algo:x}")
        sig = key.sign(data, padding.PSS(padding.MGF1(hash_alg), hash_alg.digest_size), hash_alg)
        raw = sig[::-1]
    else:
        raise SignatureError(f"unsupported signing key type {type(key).__name__}")
    return raw.ljust(_SIG_LEN, b"\0")


def _verify_raw(data: bytes, key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, slot: SigSlot) -> None:
    hash_alg = _hash_for(slot.algo)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            if slot.algo not in (Algo.ECDSA_SHA256, Algo.ECDSA_SHA384):
                raise SignatureError(f"signature algorithm 0x{slot.algo:x} does not match an EC signer")
            r = le_to_int(slot.raw[:_EC_COORD_LEN])
            s = le_to_int(slot.raw[_EC_COORD_LEN:2 * _EC_COORD_LEN])
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hash_alg))
        elif isinstance(key, rsa.RSAPublicKey):
            if slot.algo not in _RSA_ALGOS:
                raise SignatureError(f"signature algorithm 0x{slot.algo:x} does not match an RSA signer")
            size = key.key_size // 8
            sig = slot.raw[:size][::-1]
            key.verify(sig, data, padding.PSS(padding.MGF1(hash_alg), hash_alg.digest_size), hash_alg)
        else:
            raise SignatureError(f"unsupported verifying key type {type(key).__name__}")
    except InvalidSignature:
        raise SignatureError("signature does not verify") from None


def sign_sev_cert(cert: SevCert, signer_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
                  signer_usage: int, algo: int | None = None, slot: int | None = None) -> SevCert:
    """`cert` with one signature slot filled by `signer_key` (the caller holds the key; nothing is
    stored). `slot` is 1 or 2, default the first empty one (a PEK carries OCA in 1 and CEK in 2).
    Default algorithms: ECDSA-SHA256 for EC signers (as real parts), RSA-PSS-SHA384 for an RSA
    signer of 4096 bits (an ASK signing a CEK, Rome and later), RSA-PSS-SHA256 otherwise."""
    if algo is None:
        if isinstance(signer_key, rsa.RSAPrivateKey):
            algo = Algo.RSA_SHA384 if signer_key.key_size >= 4096 else Algo.RSA_SHA256
        else:
            algo = Algo.ECDSA_SHA256
    if slot is None:
        slot = 1 if cert.sig1.empty else 2 if cert.sig2.empty else 0
        if slot == 0:
            raise SignatureError("both signature slots are already used")
    if slot not in (1, 2):
        raise FieldRangeError(f"signature slot must be 1 or 2, not {slot}")
    raw = _sign_raw(cert.signed_bytes(), signer_key, algo)
    filled = SigSlot(int(signer_usage), int(algo), raw)
    return dataclasses.replace(cert, **{f"sig{slot}": filled})


def verify_sev_cert(cert: SevCert, signer: SevCert | AmdCert | ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
                    signer_usage: int | None = None) -> int:
    """Check that `signer` signed `cert`; returns the slot number (1 or 2) that verified.

    `signer` is a SevCert (its key and usage are used), an AmdCert (an ASK signing a CEK),
    or a bare public key with
    `signer_usage`. The slot is chosen by the signer's usage code, as the firmware does;
    a missing slot or a bad signature is a SignatureError."""
    if isinstance(signer, SevCert):
        key = signer.public_key()
        usage = signer.pubkey_usage if signer_usage is None else signer_usage
    elif isinstance(signer, AmdCert):
        key = signer.public_key()
        usage = signer.key_usage if signer_usage is None else signer_usage
    else:
        key = signer
        if signer_usage is None:
            raise SignatureError("signer_usage is required with a bare public key")
        usage = signer_usage
    data = cert.signed_bytes()
    for number, slot in enumerate(cert.slots(), start=1):
        if not slot.empty and slot.usage == usage:
            _verify_raw(data, key, slot)  # type: ignore[arg-type]
            return number
    raise SignatureError(f"certificate has no signature by usage 0x{usage:x}")


def split_cert_chain(buf: bytes, count: int = 3) -> list[SevCert]:
    """Split concatenated SEV certificates (PDH_CERT_EXPORT's chain is PEK||OCA||CEK)."""
    buf = require_len(buf, count * SEV_CERT_SIZE, f"chain of {count} SEV certificates")
    return [SevCert.decode(buf[i * SEV_CERT_SIZE:(i + 1) * SEV_CERT_SIZE]) for i in range(count)]


def join_cert_chain(*certs: SevCert) -> bytes:
    """Concatenate SEV certificates in the given order."""
    return b"".join(c.encode() for c in certs)
