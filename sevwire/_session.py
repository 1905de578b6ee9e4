"""The LAUNCH_START session (sev-reference 7): how the guest owner hands TEK and TIK to the PSP.

Owner: an ephemeral P-384 key (GODH) and the platform's PDH give Z (the ECDH x-coordinate, 48
bytes big-endian, as `cryptography` and OpenSSL derive it); Z and a NONCE give master, KEK and
KIK; TEK||TIK is encrypted with AES-128-CTR under KEK and authenticated with HMAC-SHA256 under KIK
(WRAP_MAC); POLICY_MAC = HMAC-SHA256(TIK, policy u32LE) binds the policy the owner chose.
PSP: the same Z from the PDH private key and the GODH certificate; WRAP_MAC is checked before
anything is decrypted, and POLICY_MAC against the policy in the LAUNCH_START command, so a
hypervisor that swaps the blob or relaxes the policy is refused.

Blob (128 bytes): NONCE[16] @0, WRAP_TK[32] @0x10, WRAP_IV[16] @0x30, WRAP_MAC[32] @0x40,
POLICY_MAC[32] @0x60.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import struct
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sevwire._bytes import require_bytes, require_len
from sevwire._errors import CertificateError, FieldRangeError, PolicyMacError, WrapMacError
from sevwire._kdf import derive_kek, derive_kik, derive_master
from sevwire._sevcert import Curve, SevCert, Usage

__all__ = [
    "SESSION_BLOB_SIZE",
    "SessionBlob",
    "TransportKeys",
    "OwnerSession",
    "aes128_ctr",
    "policy_mac",
    "seal_session",
    "unseal_session",
    "ecdh_shared_secret",
    "build_session",
    "open_session",
]

SESSION_BLOB_SIZE = 128


@dataclasses.dataclass(frozen=True)
class SessionBlob:
    """The 128-byte session buffer LAUNCH_START reads at `session_paddr`."""

    nonce: bytes
    wrap_tk: bytes
    wrap_iv: bytes
    wrap_mac: bytes
    policy_mac: bytes

    _FORMAT = struct.Struct("<16s32s16s32s32s")

    def pack(self) -> bytes:
        for name, size in (("nonce", 16), ("wrap_tk", 32), ("wrap_iv", 16), ("wrap_mac", 32), ("policy_mac", 32)):
            require_bytes(getattr(self, name), size, f"session {name}")
        return self._FORMAT.pack(self.nonce, self.wrap_tk, self.wrap_iv, self.wrap_mac, self.policy_mac)

    @classmethod
    def unpack(cls, buf: bytes) -> SessionBlob:
        buf = require_len(buf, SESSION_BLOB_SIZE, "session blob")
        return cls(*cls._FORMAT.unpack(buf))


class TransportKeys(NamedTuple):
    """TEK encrypts LAUNCH_SECRET (and migration) data; TIK authenticates it and the measurement."""

    tek: bytes
    tik: bytes


@dataclasses.dataclass(frozen=True)
class OwnerSession:
    """What the guest owner gets from build_session: the blob and GODH certificate for
    LAUNCH_START, and the transport keys to keep (tmp_tk.bin = TEK||TIK)."""

    blob: bytes
    godh_cert: bytes
    tek: bytes
    tik: bytes

    @property
    def keys(self) -> TransportKeys:
        return TransportKeys(self.tek, self.tik)


def aes128_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-128-CTR with the full 16-byte IV as a big-endian counter (OpenSSL's CTR)."""
    require_bytes(key, 16, "AES-128 key")
    require_bytes(iv, 16, "CTR IV")
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def policy_mac(tik: bytes, policy: int) -> bytes:
    """POLICY_MAC = HMAC-SHA256(TIK, policy u32LE)."""
    if not 0 <= int(policy) <= 0xFFFFFFFF:
        raise FieldRangeError(f"policy 0x{int(policy):x} does not fit in 32 bits")
    return hmac.new(tik, struct.pack("<I", int(policy)), hashlib.sha256).digest()


def seal_session(z: bytes, nonce: bytes, wrap_iv: bytes, tek: bytes, tik: bytes, policy: int) -> SessionBlob:
    """The session blob from a shared secret Z (owner side, after ECDH)."""
    nonce = require_bytes(nonce, 16, "nonce")
    wrap_iv = require_bytes(wrap_iv, 16, "wrap_iv")
    tek = require_bytes(tek, 16, "TEK")
    tik = require_bytes(tik, 16, "TIK")
    master = derive_master(bytes(z), nonce)
    wrap_tk = aes128_ctr(derive_kek(master), wrap_iv, tek + tik)
    wrap_mac = hmac.new(derive_kik(master), wrap_tk, hashlib.sha256).digest()
    return SessionBlob(nonce, wrap_tk, wrap_iv, wrap_mac, policy_mac(tik, policy))


def unseal_session(z: bytes, blob: SessionBlob | bytes, policy: int) -> TransportKeys:
    """TEK and TIK from a session blob (PSP side, after ECDH). WRAP_MAC is checked first, so
    nothing unauthenticated is decrypted; then POLICY_MAC against the command's policy."""
    if not isinstance(blob, SessionBlob):
        blob = SessionBlob.unpack(blob)
    master = derive_master(bytes(z), blob.nonce)
    expected = hmac.new(derive_kik(master), blob.wrap_tk, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, blob.wrap_mac):
        raise WrapMacError("session WRAP_MAC does not verify (wrong PDH/GODH pair or tampered WRAP_TK)")
    keys = aes128_ctr(derive_kek(master), blob.wrap_iv, blob.wrap_tk)
    tek, tik = keys[:16], keys[16:]
    if not hmac.compare_digest(policy_mac(tik, policy), blob.policy_mac):
        raise PolicyMacError(f"session POLICY_MAC does not match policy 0x{int(policy):08x}")
    return TransportKeys(tek, tik)


def _dh_cert(cert: SevCert | bytes, what: str) -> tuple[SevCert, ec.EllipticCurvePublicKey]:
    if not isinstance(cert, SevCert):
        cert = SevCert.decode(cert)
    if cert.pubkey_usage != Usage.PDH:
        raise CertificateError(f"{what} certificate has usage 0x{cert.pubkey_usage:x}, expected PDH (0x1003)")
    if cert.curve != Curve.P384:
        raise CertificateError(f"{what} certificate is not an EC P-384 key")
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return cert, key


def ecdh_shared_secret(private_key: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
    """Z: the ECDH x-coordinate, 48 bytes big-endian, exactly as `cryptography` derives it."""
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or private_key.curve.name != "secp384r1":
        raise CertificateError("the ECDH private key must be an EC P-384 key")
    return private_key.exchange(ec.ECDH(), peer)


def build_session(pdh_cert: SevCert | bytes, policy: int,
                  godh_private_key: ec.EllipticCurvePrivateKey | None = None,
                  tek: bytes | None = None, tik: bytes | None = None,
                  nonce: bytes | None = None, wrap_iv: bytes | None = None) -> OwnerSession:
    """The guest owner's LAUNCH_START inputs for a platform's PDH. Unset values are fresh random;
    tests pass them to get fixed outputs. The GODH certificate is unsigned, as on real tools."""
    _, pdh_key = _dh_cert(pdh_cert, "PDH")
    if godh_private_key is None:
        godh_private_key = ec.generate_private_key(ec.SECP384R1())
    tek = os.urandom(16) if tek is None else tek
    tik = os.urandom(16) if tik is None else tik
    nonce = os.urandom(16) if nonce is None else nonce
    wrap_iv = os.urandom(16) if wrap_iv is None else wrap_iv
    z = ecdh_shared_secret(godh_private_key, pdh_key)
    blob = seal_session(z, nonce, wrap_iv, tek, tik, policy)
    godh = SevCert.from_public_key(godh_private_key.public_key(), Usage.PDH)
    return OwnerSession(blob.pack(), godh.encode(), bytes(tek), bytes(tik))


def open_session(session_blob: SessionBlob | bytes, godh_cert: SevCert | bytes,
                 pdh_private_key: ec.EllipticCurvePrivateKey, policy: int) -> TransportKeys:
    """The PSP's side of LAUNCH_START: TEK and TIK, or WrapMacError / PolicyMacError /
    CertificateError / BufferLengthError saying what is wrong."""
    if not isinstance(session_blob, SessionBlob):
        session_blob = SessionBlob.unpack(session_blob)
    _, godh_key = _dh_cert(godh_cert, "GODH")
    z = ecdh_shared_secret(pdh_private_key, godh_key)
    return unseal_session(z, session_blob, policy)
