"""SNP guest messages (es-snp-reference 4.1, 4.3): the 0x60-byte header, AES-256-GCM with a
VMPCK, MSG_REPORT_REQ and MSG_REPORT_RSP.

The guest and the PSP share the four VMPCKs of the secrets page and nothing else; the hypervisor
only carries the message. So everything that matters is authenticated: header bytes 0x30-0x5F
(algorithm, type, size, VMPCK index and the reserved bytes between them) are the AAD and the
payload is the ciphertext, the tag sits in the first 16 bytes of authtag. The reserved bytes are
kept as received, so a decoded header encodes back to the same bytes and the AAD is exactly what
was sent: a hypervisor that changes a reserved byte in transit breaks the tag. The IV is the sequence number (LE) then four zero bytes, which
is why both sides refuse a sequence number they have seen: a replay would reuse an IV.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sevwire._bytes import require_bytes
from sevwire._errors import BufferLengthError, FormatError, MacError

__all__ = [
    "MSG_HDR_SIZE", "MSG_REPORT_REQ_SIZE", "MSG_REPORT_RSP_SIZE", "MsgType", "SnpMsgHeader",
    "MsgReportReq", "MsgReportRsp", "GuestMessageError", "seal_guest_message", "open_guest_message",
]

MSG_HDR_SIZE = 0x60
MSG_REPORT_REQ_SIZE = 0x60
MSG_REPORT_RSP_SIZE = 0x4C0
AEAD_AES_256_GCM = 1
_HDR = struct.Struct("<32sQ8xBBHBBH4sB35s")
_PAGE = 0x1000


class MsgType(enum.IntEnum):
    """msg_type: each response is its request + 1."""

    MSG_CPUID_REQ = 1
    MSG_CPUID_RSP = 2
    MSG_KEY_REQ = 3
    MSG_KEY_RSP = 4
    MSG_REPORT_REQ = 5
    MSG_REPORT_RSP = 6


class GuestMessageError(MacError):
    """A guest message whose tag does not verify (wrong VMPCK, altered header or payload)."""


@dataclasses.dataclass(frozen=True)
class SnpMsgHeader:
    """snp_guest_msg_hdr; `authtag` is the 32-byte field (GCM tag = its first 16 bytes)."""

    msg_seqno: int
    msg_type: int
    msg_sz: int
    msg_vmpck: int = 0
    algo: int = AEAD_AES_256_GCM
    hdr_version: int = 1
    hdr_sz: int = MSG_HDR_SIZE
    msg_version: int = 1
    authtag: bytes = bytes(32)
    rsvd_38: bytes = bytes(4)
    """Reserved bytes 0x38-0x3B, as received (zero in a header we build)."""
    rsvd_3d: bytes = bytes(35)
    """Reserved bytes 0x3D-0x5F, as received."""

    def encode(self) -> bytes:
        # struct's "Ns" pads or cuts silently; a reserved field of the wrong size is a bug here.
        tag = require_bytes(self.authtag, 32, "authtag")
        rsvd_38 = require_bytes(self.rsvd_38, 4, "reserved bytes 0x38-0x3B")
        rsvd_3d = require_bytes(self.rsvd_3d, 35, "reserved bytes 0x3D-0x5F")
        try:
            return _HDR.pack(tag, self.msg_seqno, self.algo, self.hdr_version, self.hdr_sz,
                             self.msg_type, self.msg_version, self.msg_sz, rsvd_38, self.msg_vmpck,
                             rsvd_3d)
        except struct.error as exc:
            raise FormatError(f"guest message header field out of range ({exc})") from None

    @classmethod
    def decode(cls, buf: bytes) -> SnpMsgHeader:
        if len(buf) < MSG_HDR_SIZE:
            raise BufferLengthError(f"guest message header: need {MSG_HDR_SIZE} bytes, got {len(buf)}")
        tag, seq, algo, hver, hsz, mtype, mver, msz, rsvd_38, vmpck, rsvd_3d = _HDR.unpack_from(
            bytes(buf[:MSG_HDR_SIZE]))
        return cls(seq, mtype, msz, vmpck, algo, hver, hsz, mver, tag, rsvd_38, rsvd_3d)

    def aad(self) -> bytes:
        """Header bytes 0x30-0x5F, reserved bytes included: everything but the tag and the
        sequence number (the IV). For a decoded header these are the bytes received."""
        return self.encode()[0x30:MSG_HDR_SIZE]

    def check(self) -> None:
        """The firmware's header rules; FormatError (INVALID_PARAM) on any miss."""
        if self.hdr_version != 1 or self.hdr_sz != MSG_HDR_SIZE or self.algo != AEAD_AES_256_GCM:
            raise FormatError("guest message header: version, size or algorithm not supported")
        if self.msg_sz == 0 or self.msg_sz % 16 or MSG_HDR_SIZE + self.msg_sz > _PAGE:
            raise FormatError(f"guest message size {self.msg_sz} is not a non-zero multiple of 16 in one page")
        if self.msg_vmpck > 3:
            raise FormatError(f"guest message VMPCK index {self.msg_vmpck} is not 0-3")
        if self.msg_seqno == 0:
            raise FormatError("guest message sequence number 0 is invalid")


def _iv(seqno: int) -> bytes:
    return seqno.to_bytes(8, "little") + bytes(4)


def seal_guest_message(vmpck: bytes, seqno: int, msg_type: int, payload: bytes,
                       vmpck_index: int = 0) -> bytes:
    """Header || AES-256-GCM(payload) as a guest (or the PSP for a response) sends it."""
    key = require_bytes(vmpck, 32, "VMPCK")
    payload = bytes(payload)
    hdr = SnpMsgHeader(seqno, msg_type, len(payload), vmpck_index)
    hdr.check()
    sealed = AESGCM(key).encrypt(_iv(seqno), payload, hdr.aad())
    body, tag = sealed[:-16], sealed[-16:]
    return dataclasses.replace(hdr, authtag=tag + bytes(16)).encode() + body


def open_guest_message(vmpck: bytes, message: bytes) -> tuple[SnpMsgHeader, bytes]:
    """(header, plaintext payload); GuestMessageError if the tag does not verify."""
    key = require_bytes(vmpck, 32, "VMPCK")
    hdr = SnpMsgHeader.decode(message)
    hdr.check()
    body = bytes(message[MSG_HDR_SIZE:MSG_HDR_SIZE + hdr.msg_sz])
    if len(body) != hdr.msg_sz:
        raise BufferLengthError(f"guest message: payload needs {hdr.msg_sz} bytes, got {len(body)}")
    try:
        plain = AESGCM(key).decrypt(_iv(hdr.msg_seqno), body + hdr.authtag[:16], hdr.aad())
    except InvalidTag:
        raise GuestMessageError("guest message authentication tag does not verify") from None
    return hdr, plain


@dataclasses.dataclass(frozen=True)
class MsgReportReq:
    """MSG_REPORT_REQ (0x60 bytes): the guest's report_data, its VMPL, key_sel [1:0]."""

    report_data: bytes
    vmpl: int = 0
    key_sel: int = 0

    def encode(self) -> bytes:
        rd = require_bytes(self.report_data, 64, "report_data")
        return rd + struct.pack("<II", self.vmpl, self.key_sel) + bytes(MSG_REPORT_REQ_SIZE - 72)

    @classmethod
    def decode(cls, buf: bytes) -> MsgReportReq:
        if len(buf) != MSG_REPORT_REQ_SIZE:
            raise BufferLengthError(f"MSG_REPORT_REQ: expected {MSG_REPORT_REQ_SIZE} bytes, got {len(buf)}")
        vmpl, sel = struct.unpack_from("<II", buf, 64)
        return cls(bytes(buf[:64]), vmpl, sel & 3)


@dataclasses.dataclass(frozen=True)
class MsgReportRsp:
    """MSG_REPORT_RSP (0x4C0 bytes): status, report_size, the report at 0x20 (empty on error)."""

    status: int
    report: bytes = b""

    def encode(self) -> bytes:
        head = struct.pack("<II", self.status, len(self.report)) + bytes(24)
        return (head + self.report).ljust(MSG_REPORT_RSP_SIZE, b"\0")

    @classmethod
    def decode(cls, buf: bytes) -> MsgReportRsp:
        if len(buf) != MSG_REPORT_RSP_SIZE:
            raise BufferLengthError(f"MSG_REPORT_RSP: expected {MSG_REPORT_RSP_SIZE} bytes, got {len(buf)}")
        status, size = struct.unpack_from("<II", buf, 0)
        if size > MSG_REPORT_RSP_SIZE - 0x20:
            raise FormatError(f"MSG_REPORT_RSP report_size {size} does not fit")
        return cls(status, bytes(buf[0x20:0x20 + size]))
