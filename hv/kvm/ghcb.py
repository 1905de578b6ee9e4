"""The GHCB (Guest-Hypervisor Communication Block) page and the GHCB MSR protocol, as data.

An SEV-ES guest's #VC handler puts only the registers it chooses into this shared (C=0) page,
with one valid bit per field, sets sw_exit_code / sw_exit_info_1 / sw_exit_info_2 and executes
VMGEXIT; the hypervisor reads the page, performs the event, writes results (with their valid
bits) and resumes. Offsets are the save-area offsets of es-snp-reference section 2 (Linux
`struct ghcb`); nothing here touches memory: `Ghcb` wraps a copy of the page's bytes.
"""

from __future__ import annotations

import struct

__all__ = [
    "Ghcb", "GHCB_ERR", "GHCB_SIZE", "MsrProto", "SHARED_BUFFER", "SHARED_BUFFER_SIZE",
    "SwExit", "eventinj_exception",
]

GHCB_SIZE = 0x1000
SHARED_BUFFER = 0x800
SHARED_BUFFER_SIZE = 2032

_FIELDS = {
    "cpl": (0x0CB, 1), "xss": (0x140, 8), "dr7": (0x160, 8), "rip": (0x178, 8), "rsp": (0x1D8, 8),
    "rax": (0x1F8, 8), "rcx": (0x308, 8), "rdx": (0x310, 8), "rbx": (0x318, 8), "rbp": (0x328, 8),
    "rsi": (0x330, 8), "rdi": (0x338, 8),
    "sw_exit_code": (0x390, 8), "sw_exit_info_1": (0x398, 8), "sw_exit_info_2": (0x3A0, 8),
    "sw_scratch": (0x3A8, 8), "xcr0": (0x3E8, 8),
}
_VALID_BITMAP = 0x3F0
_PROTOCOL_VERSION = 0xFFA
_GHCB_USAGE = 0xFFC


class SwExit:
    """sw_exit_code values hv performs (SVM exit codes and the GHCB's own events)."""
    RDTSC = 0x6E
    RDTSCP = 0x87
    DR7_READ = 0x27
    DR7_WRITE = 0x37
    CPUID = 0x72
    IOIO = 0x7B
    MSR = 0x7C
    VMMCALL = 0x81
    WBINVD = 0x89
    MMIO_READ = 0x8000_0001
    MMIO_WRITE = 0x8000_0002
    NMI_COMPLETE = 0x8000_0003
    AP_JUMP_TABLE = 0x8000_0005  # sw_exit_info_1 0: set it to sw_exit_info_2; 1: get it
    SNP_PSC = 0x8000_0010  # SEV-SNP page state change: sw_scratch -> the PSC buffer
    SNP_GUEST_REQUEST = 0x8000_0011
    SNP_EXT_GUEST_REQUEST = 0x8000_0012  # RAX = certificate pages' GPA, RBX = their number
    HV_FEATURES = 0x8000_FFFD
    TERMINATE = 0x8000_FFFE
    UNSUPPORTED = 0x8000_FFFF


class GHCB_ERR:
    """sw_exit_info_2 when sw_exit_info_1 = 2 (the request was bad); Linux's GHCB_ERR_*."""
    NOT_REGISTERED = 1
    INVALID_USAGE = 2
    INVALID_SCRATCH_AREA = 3
    MISSING_INPUT = 4
    INVALID_INPUT = 5
    INVALID_EVENT = 6


class MsrProto:
    """GHCBInfo codes of the GHCB MSR protocol (MSR 0xC0010130 bits 11:0)."""
    SEV_INFO_RESP = 0x001
    SEV_INFO_REQ = 0x002
    CPUID_REQ = 0x004
    CPUID_RESP = 0x005
    REG_GPA_REQ = 0x012
    REG_GPA_RESP = 0x013
    PSC_REQ = 0x014  # SEV-SNP page state change: GFN [51:12], operation [55:52]
    PSC_RESP = 0x015  # error code [63:32], 0 = done
    HV_FEATURES_REQ = 0x080
    HV_FEATURES_RESP = 0x081
    TERM_REQ = 0x100
    PROTOCOL_MIN = 1
    PROTOCOL_MAX = 2

    @staticmethod
    def sev_info(cbitpos: int) -> int:
        """The SEV_INFO response: max/min protocol version and the C-bit position (also the
        MSR's value at vCPU reset)."""
        return (MsrProto.PROTOCOL_MAX << 48 | MsrProto.PROTOCOL_MIN << 32 | (cbitpos & 0xFF) << 24
                | MsrProto.SEV_INFO_RESP)


def eventinj_exception(vector: int, error_code: int | None = None) -> int:
    """sw_exit_info_2 for "inject this exception" (EVENTINJ format: vector, type 3, EV, V)."""
    ev = 0 if error_code is None else (1 << 11 | (error_code & 0xFFFFFFFF) << 32)
    return vector | 3 << 8 | ev | 1 << 31


class Ghcb:
    """A copy of a GHCB page: typed access to its fields and valid bits."""

    def __init__(self, gpa: int, page: bytes):
        if len(page) != GHCB_SIZE:
            raise ValueError("a GHCB is one 4 KiB page")
        self.gpa = gpa
        self.page = bytearray(page)

    @property
    def usage(self) -> int:
        return struct.unpack_from("<I", self.page, _GHCB_USAGE)[0]

    @property
    def protocol_version(self) -> int:
        return struct.unpack_from("<H", self.page, _PROTOCOL_VERSION)[0]

    def valid(self, name: str) -> bool:
        bit = _FIELDS[name][0] // 8
        return bool(self.page[_VALID_BITMAP + bit // 8] >> (bit % 8) & 1)

    def get(self, name: str) -> int:
        off, size = _FIELDS[name]
        return int.from_bytes(self.page[off:off + size], "little")

    def get_valid(self, name: str) -> int | None:
        return self.get(name) if self.valid(name) else None

    def set(self, name: str, value: int) -> None:
        """Write a field and mark it valid (what the hypervisor does for its outputs)."""
        off, size = _FIELDS[name]
        self.page[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        bit = off // 8
        self.page[_VALID_BITMAP + bit // 8] |= 1 << (bit % 8)

    def clear_valid(self) -> None:
        self.page[_VALID_BITMAP:_VALID_BITMAP + 16] = bytes(16)

    def answer(self, info_1: int = 0, info_2: int = 0) -> None:
        """sw_exit_info_1/2 of the reply (0 = done; 1 = inject info_2; 2 = bad request)."""
        off1, off2 = _FIELDS["sw_exit_info_1"][0], _FIELDS["sw_exit_info_2"][0]
        self.page[off1:off1 + 8] = (info_1 & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")
        self.page[off2:off2 + 8] = (info_2 & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")

    def scratch_range(self, length: int, scratch: int | None = None) -> int | None:
        """Offset in the page of the `length` bytes at GPA `scratch` (default: sw_scratch, if it
        is marked valid), if they lie in the shared buffer (the only scratch area hv accepts;
        KVM also allows up to 16 pages elsewhere). Pass the value read before the valid bitmap
        was cleared."""
        if scratch is None:
            if not self.valid("sw_scratch"):
                return None
            scratch = self.get("sw_scratch")
        off = scratch - self.gpa
        if length >= 0 and SHARED_BUFFER <= off and off + length <= SHARED_BUFFER + SHARED_BUFFER_SIZE:
            return off
        return None
