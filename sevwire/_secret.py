"""LAUNCH_SECRET packets (sev-reference 6): how the guest owner injects a secret that only a
guest with the expected measurement can receive.

Header (52 bytes): FLAGS u32LE (bit 0 COMPRESSED) || IV[16] || MAC[32]. The transport data is
AES-128-CTR(TEK, IV, secret), the full IV a big-endian counter. MAC = HMAC-SHA256(TIK, 0x01 ||
FLAGS || IV || GUEST_LEN u32LE || TRANS_LEN u32LE || CIPHERTEXT || MEASURE[32]); MEASURE is left
out before API 0.17. Binding MEASURE means a packet made for one launch is refused by any other.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import os
import struct

from sevwire._bytes import require_bytes, require_len
from sevwire._errors import FieldRangeError, SecretMacError
from sevwire._measure import api_at_least
from sevwire._session import aes128_ctr

__all__ = ["SECRET_HEADER_SIZE", "SECRET_CONTEXT", "SecretFlags", "SecretHeader", "channel_message", "secret_mac",
           "package_secret", "open_secret"]

SECRET_HEADER_SIZE = 52
SECRET_CONTEXT = 0x01


class SecretFlags(enum.IntFlag):
    """LAUNCH_SECRET header flags."""

    COMPRESSED = 0x1


@dataclasses.dataclass(frozen=True)
class SecretHeader:
    """The 52-byte packet header at LAUNCH_SECRET's `hdr_paddr`."""

    flags: int
    iv: bytes
    mac: bytes

    _FORMAT = struct.Struct("<I16s32s")

    def pack(self) -> bytes:
        require_bytes(self.iv, 16, "secret IV")
        require_bytes(self.mac, 32, "secret MAC")
        try:
            return self._FORMAT.pack(self.flags, self.iv, self.mac)
        except struct.error:
            raise FieldRangeError("secret flags must be a u32") from None

    @classmethod
    def unpack(cls, buf: bytes) -> SecretHeader:
        buf = require_len(buf, SECRET_HEADER_SIZE, "LAUNCH_SECRET header")
        return cls(*cls._FORMAT.unpack(buf))


def channel_message(context: int, flags: int, iv: bytes, guest_len: int, trans_len: int,
                    ciphertext: bytes) -> bytes:
    """What a channel packet's MAC starts with: CONTEXT u8 || FLAGS u32 || IV[16] || GUEST_LEN u32
    || TRANS_LEN u32 || CIPHERTEXT (0x01 LAUNCH_SECRET, 0x02 SEND/RECEIVE_UPDATE_*)."""
    try:
        return struct.pack("<BI16sII", context, flags, require_bytes(iv, 16, "packet IV"),
                           guest_len, trans_len) + bytes(ciphertext)
    except struct.error:
        raise FieldRangeError("packet flags and lengths must be u32") from None


def secret_mac(tik: bytes, flags: int, iv: bytes, guest_len: int, trans_len: int, ciphertext: bytes,
               measurement: bytes | None, api_major: int, api_minor: int) -> bytes:
    """The packet MAC; `measurement` is required from API 0.17 and ignored before."""
    tik = require_bytes(tik, 16, "TIK")
    msg = channel_message(SECRET_CONTEXT, flags, iv, guest_len, trans_len, ciphertext)
    if api_at_least(api_major, api_minor):
        if measurement is None:
            raise FieldRangeError("the secret MAC needs the launch measurement from API 0.17")
        msg += require_bytes(measurement, 32, "measurement")
    return hmac.new(tik, msg, hashlib.sha256).digest()


def package_secret(tek: bytes, tik: bytes, secret: bytes, measurement: bytes | None,
                   api_major: int, api_minor: int, *, flags: int = 0,
                   iv: bytes | None = None) -> tuple[bytes, bytes]:
    """(header 52 bytes, ciphertext) for LAUNCH_SECRET. GUEST_LEN and TRANS_LEN are both
    len(secret), as AMD's and virtee's tools do. `iv` is random unless given (tests)."""
    tek = require_bytes(tek, 16, "TEK")
    iv = os.urandom(16) if iv is None else require_bytes(iv, 16, "secret IV")
    secret = bytes(secret)
    ciphertext = aes128_ctr(tek, iv, secret)
    mac = secret_mac(tik, flags, iv, len(secret), len(ciphertext), ciphertext, measurement,
                     api_major, api_minor)
    return SecretHeader(flags, iv, mac).pack(), ciphertext


def open_secret(tek: bytes, tik: bytes, header: bytes | SecretHeader, ciphertext: bytes,
                measurement: bytes | None, api_major: int, api_minor: int,
                guest_len: int | None = None) -> bytes:
    """The PSP's side: check the MAC (with the command's GUEST_LEN, default the ciphertext's
    length, and the measurement the PSP computed) and only then decrypt. SecretMacError otherwise."""
    if not isinstance(header, SecretHeader):
        header = SecretHeader.unpack(header)
    ciphertext = bytes(ciphertext)
    guest_len = len(ciphertext) if guest_len is None else guest_len
    expected = secret_mac(tik, header.flags, header.iv, guest_len, len(ciphertext), ciphertext,
                          measurement, api_major, api_minor)
    if not hmac.compare_digest(expected, header.mac):
        raise SecretMacError("LAUNCH_SECRET MAC does not verify (tampered packet or another launch's measurement)")
    return aes128_ctr(require_bytes(tek, 16, "TEK"), header.iv, ciphertext)
