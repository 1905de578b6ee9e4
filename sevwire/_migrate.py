"""SEV migration on the wire (es-snp-reference 5): the SEND_* / RECEIVE_* command buffers and the
transport packets that carry guest memory and VMSAs from one PSP to another.

Keys. SEND_START draws a fresh TEK and TIK and wraps them for the target's PDH exactly as a
guest owner wraps them for LAUNCH_START (sevwire._session): Z = ECDH(the sender's PDH private
key, the target's PDH), then master, KEK and KIK; POLICY_MAC binds the policy. The receiver
unwraps with its own PDH private key and the sender's PDH certificate. So only the two PSPs can
read a packet: the hypervisors carry them.

Packet (one per SEND_UPDATE_DATA / SEND_UPDATE_VMSA): a 52-byte header FLAGS u32 (bit 0
COMPRESSED) || IV[16] || MAC[32], and the transport data AES-128-CTR(TEK, IV, plaintext) (the IV
a big-endian counter, fresh and random per packet). MAC = HMAC-SHA256(TIK, 0x02 || FLAGS || IV ||
GUEST_LEN u32 || TRANS_LEN u32 || TRANS); both lengths are the plaintext's. Data and VMSA packets
use the same context byte 0x02 (AMD's firmware does; LAUNCH_SECRET's is 0x01).
"""

from __future__ import annotations

import dataclasses
import hmac
import hashlib
import os

from sevwire._buffers import CommandBuffer
from sevwire._bytes import require_bytes
from sevwire._errors import MacError
from sevwire._secret import SECRET_HEADER_SIZE, SecretFlags, SecretHeader, channel_message
from sevwire._session import aes128_ctr

__all__ = [
    "PACKET_HEADER_SIZE",
    "TRANSPORT_CONTEXT",
    "PacketFlags",
    "PacketHeader",
    "PacketMacError",
    "packet_mac",
    "seal_packet",
    "open_packet",
    "SendStart",
    "SendUpdateData",
    "SendUpdateVmsa",
    "SendFinish",
    "SendCancel",
    "ReceiveStart",
    "ReceiveUpdateData",
    "ReceiveUpdateVmsa",
    "ReceiveFinish",
]

PACKET_HEADER_SIZE = SECRET_HEADER_SIZE
TRANSPORT_CONTEXT = 0x02
PacketFlags = SecretFlags
"""The packet header's flags (bit 0 COMPRESSED): the LAUNCH_SECRET header's, byte for byte."""
PacketHeader = SecretHeader
"""FLAGS u32 || IV[16] || MAC[32]: the same 52-byte layout as a LAUNCH_SECRET header."""


class PacketMacError(MacError):
    """A migration packet's MAC does not verify: altered in transit, or made with other keys
    (RECEIVE_UPDATE_* answers BAD_MEASUREMENT, with guest memory untouched)."""


def packet_mac(tik: bytes, flags: int, iv: bytes, guest_len: int, trans_len: int, trans: bytes) -> bytes:
    """MAC = HMAC-SHA256(TIK, 0x02 || FLAGS || IV || GUEST_LEN || TRANS_LEN || TRANS)."""
    tik = require_bytes(tik, 16, "TIK")
    msg = channel_message(TRANSPORT_CONTEXT, flags, iv, guest_len, trans_len, trans)
    return hmac.new(tik, msg, hashlib.sha256).digest()


def seal_packet(tek: bytes, tik: bytes, plaintext: bytes, *, flags: int = 0,
                iv: bytes | None = None) -> tuple[bytes, bytes]:
    """(header 52 bytes, transport data) for `plaintext`; `iv` is random unless given (tests)."""
    tek = require_bytes(tek, 16, "TEK")
    iv = os.urandom(16) if iv is None else require_bytes(iv, 16, "packet IV")
    plaintext = bytes(plaintext)
    trans = aes128_ctr(tek, iv, plaintext)
    mac = packet_mac(tik, flags, iv, len(plaintext), len(trans), trans)
    return PacketHeader(flags, iv, mac).pack(), trans


def open_packet(tek: bytes, tik: bytes, header: bytes | PacketHeader, trans: bytes,
                guest_len: int | None = None) -> bytes:
    """The receiving PSP's side: check the MAC (with the command's GUEST_LEN), then decrypt.
    PacketMacError before anything is decrypted when the MAC is wrong."""
    if not isinstance(header, PacketHeader):
        header = PacketHeader.unpack(header)
    trans = bytes(trans)
    guest_len = len(trans) if guest_len is None else guest_len
    expected = packet_mac(tik, header.flags, header.iv, guest_len, len(trans), trans)
    if not hmac.compare_digest(expected, header.mac):
        raise PacketMacError("migration packet MAC does not verify (altered in transit or other transport keys)")
    return aes128_ctr(require_bytes(tek, 16, "TEK"), header.iv, trans)


# -- command buffers (little-endian, packed; es-snp-reference 5) -----------------------------------

@dataclasses.dataclass(frozen=True)
class SendStart(CommandBuffer):
    """SEND_START (0x44 bytes): the target's PDH, its PEK||OCA||CEK and ASK||ARK (checked only
    under the policy's SEV and DOMAIN bits), and where the 128-byte session goes (`session_len`
    in/out); `policy` is written back."""

    FORMAT = "<IIQI4xQI4xQI4xQI"
    SPEC_SIZE = 0x44
    handle: int = 0
    policy: int = 0
    pdh_cert_paddr: int = 0
    pdh_cert_len: int = 0
    plat_certs_paddr: int = 0
    plat_certs_len: int = 0
    amd_certs_paddr: int = 0
    amd_certs_len: int = 0
    session_paddr: int = 0
    session_len: int = 0


@dataclasses.dataclass(frozen=True)
class SendUpdateData(CommandBuffer):
    """SEND_UPDATE_DATA (0x34 bytes): encrypt `guest_len` bytes of guest memory at `guest_paddr`
    into a packet: the header at `hdr_paddr` (`hdr_len` in/out, 52), the data at `trans_paddr`."""

    FORMAT = "<I4xQI4xQI4xQI"
    SPEC_SIZE = 0x34
    handle: int = 0
    hdr_paddr: int = 0
    hdr_len: int = 0
    guest_paddr: int = 0
    guest_len: int = 0
    trans_paddr: int = 0
    trans_len: int = 0


@dataclasses.dataclass(frozen=True)
class SendUpdateVmsa(SendUpdateData):
    """SEND_UPDATE_VMSA (SEV-ES): the same buffer for one vCPU's 4 KiB VMSA page."""


@dataclasses.dataclass(frozen=True)
class ReceiveUpdateData(SendUpdateData):
    """RECEIVE_UPDATE_DATA: check a packet's MAC, decrypt it into guest memory at `guest_paddr`."""


@dataclasses.dataclass(frozen=True)
class ReceiveUpdateVmsa(SendUpdateData):
    """RECEIVE_UPDATE_VMSA (SEV-ES): a VMSA packet into the page at `guest_paddr`."""


@dataclasses.dataclass(frozen=True)
class SendFinish(CommandBuffer):
    """SEND_FINISH: the guest's handle only (SUPDATE -> SENT)."""

    FORMAT = "<I"
    SPEC_SIZE = 4
    handle: int = 0


@dataclasses.dataclass(frozen=True)
class SendCancel(SendFinish):
    """SEND_CANCEL: the guest's handle only (SUPDATE -> RUNNING)."""


@dataclasses.dataclass(frozen=True)
class ReceiveFinish(SendFinish):
    """RECEIVE_FINISH: the guest's handle only (RUPDATE -> RUNNING)."""


@dataclasses.dataclass(frozen=True)
class ReceiveStart(CommandBuffer):
    """RECEIVE_START (0x24 bytes): `handle` 0 for a new key (else share that guest's), the policy,
    the *sender's* PDH and the session SEND_START made; the new handle is written back."""

    FORMAT = "<IIQI4xQI"
    SPEC_SIZE = 0x24
    handle: int = 0
    policy: int = 0
    pdh_cert_paddr: int = 0
    pdh_cert_len: int = 0
    session_paddr: int = 0
    session_len: int = 0
