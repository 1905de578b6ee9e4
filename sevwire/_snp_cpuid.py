"""The SNP CPUID page (SNP_LAUNCH_UPDATE page type 6): the CPUID table the hypervisor promises an
SEV-SNP guest, which the PSP checks against the platform before the guest may trust it.

Linux's `struct snp_cpuid_table` (arch/x86/include/asm/sev.h), little-endian and packed, one
4 KiB page with the rest zero:

    0x00 count u32 | 0x04 reserved u32 | 0x08 reserved u64
    0x10 + 48 * i  entry i < 64: eax_in u32, ecx_in u32, xcr0_in u64, xss_in u64,
                                 eax u32, ebx u32, ecx u32, edx u32, reserved u64

The guest answers CPUID from this table instead of asking the hypervisor, which could lie; the
PSP's check is what makes the table worth more than the hypervisor's word. When the PSP refuses
a table it writes its corrected table back into the page, in plaintext, so the hypervisor can show
its user what differs (`snp_cpuid_changes`).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable
from typing import ClassVar

from sevwire._errors import BufferLengthError, FieldRangeError

__all__ = ["SNP_CPUID_COUNT_MAX", "SNP_CPUID_PAGE_SIZE", "SnpCpuidEntry", "decode_snp_cpuid_page",
           "encode_snp_cpuid_page", "snp_cpuid_changes"]

SNP_CPUID_COUNT_MAX = 64
SNP_CPUID_PAGE_SIZE = 0x1000
_HEADER = struct.Struct("<IIQ")  # count, reserved, reserved


@dataclasses.dataclass(frozen=True)
class SnpCpuidEntry:
    """One entry (`struct snp_cpuid_fn`): the inputs (leaf, subleaf, and the XCR0 and XSS the
    answer is for, which only leaf 0xD's sizes depend on) and the four registers CPUID returns."""

    eax_in: int
    ecx_in: int = 0
    xcr0_in: int = 0
    xss_in: int = 0
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0
    reserved: int = 0  # must be zero

    WIRE: ClassVar[struct.Struct] = struct.Struct("<IIQQIIIIQ")

    @property
    def regs(self) -> tuple[int, int, int, int]:
        return self.eax, self.ebx, self.ecx, self.edx

    @property
    def name(self) -> str:
        """How messages name the entry: "leaf 0x1", "leaf 0x7 subleaf 0x1"."""
        sub = f" subleaf {self.ecx_in:#x}" if self.ecx_in else ""
        return f"leaf {self.eax_in:#x}{sub}"

    def pack(self) -> bytes:
        try:
            return self.WIRE.pack(*dataclasses.astuple(self))
        except struct.error as exc:
            raise FieldRangeError(f"CPUID {self.name}: a field does not fit its width ({exc})") \
                from None

    @classmethod
    def unpack(cls, raw: bytes) -> SnpCpuidEntry:
        return cls(*cls.WIRE.unpack(raw))


_ENTRY_SIZE = SnpCpuidEntry.WIRE.size  # 48
_FIELDS = [f.name for f in dataclasses.fields(SnpCpuidEntry)]
_FIELD_LABELS = {"eax": "EAX", "ebx": "EBX", "ecx": "ECX", "edx": "EDX"}


def encode_snp_cpuid_page(entries: Iterable[SnpCpuidEntry]) -> bytes:
    """The 4 KiB page of `entries`, in the order given (reserved header fields zero).
    FieldRangeError (a ValueError) for more than 64 entries or a field too wide."""
    entries = list(entries)
    if len(entries) > SNP_CPUID_COUNT_MAX:
        raise FieldRangeError(f"a CPUID page holds at most {SNP_CPUID_COUNT_MAX} entries, "
                              f"not {len(entries)}")
    table = _HEADER.pack(len(entries), 0, 0) + b"".join(e.pack() for e in entries)
    return table.ljust(SNP_CPUID_PAGE_SIZE, b"\0")


def decode_snp_cpuid_page(page: bytes) -> tuple[tuple[SnpCpuidEntry, ...], tuple[str, ...]]:
    """(the entries, what breaks the format) of a 4 KiB page, whatever it holds.

    At most 64 entries are read, however large the count; the problems, one line each, are a
    count above 64 and set reserved fields (the entries keep theirs as read). Bytes after the
    last entry are not looked at. BufferLengthError unless `page` is 4096 bytes."""
    if len(page) != SNP_CPUID_PAGE_SIZE:
        raise BufferLengthError(f"a CPUID page is {SNP_CPUID_PAGE_SIZE} bytes, not {len(page)}")
    count, reserved = _header(page)
    problems = []
    if count > SNP_CPUID_COUNT_MAX:
        problems.append(f"count {count} is above {SNP_CPUID_COUNT_MAX}")
    if reserved:
        problems.append(f"header reserved {reserved:#x} is not zero")
    entries = tuple(SnpCpuidEntry.unpack(page[off:off + _ENTRY_SIZE])
                    for off in _entry_offsets(min(count, SNP_CPUID_COUNT_MAX)))
    problems += [f"entry {i} ({e.name}): reserved is not zero"
                 for i, e in enumerate(entries) if e.reserved]
    return entries, tuple(problems)


def snp_cpuid_changes(before: bytes, after: bytes) -> list[str]:
    """What differs from one 4 KiB CPUID page to another, one line per field, in table order:
    "count 65 -> 64", "leaf 0x1 ECX 0x80000001 -> 0x80000000". How a correction the PSP wrote
    back is shown; entries past either page's count (or 64) are not compared."""
    out = []
    count_b, rsvd_b = _header(before)
    count_a, rsvd_a = _header(after)
    if count_b != count_a:
        out.append(f"count {count_b} -> {count_a}")
    if rsvd_b != rsvd_a:
        out.append(f"header reserved {rsvd_b:#x} -> {rsvd_a:#x}")
    for off in _entry_offsets(min(count_b, count_a, SNP_CPUID_COUNT_MAX)):
        old = SnpCpuidEntry.unpack(before[off:off + _ENTRY_SIZE])
        new = SnpCpuidEntry.unpack(after[off:off + _ENTRY_SIZE])
        for field in _FIELDS:
            was, now = getattr(old, field), getattr(new, field)
            if was != now:
                out.append(f"{old.name} {_FIELD_LABELS.get(field, field)} {was:#x} -> {now:#x}")
    return out


def _header(page: bytes) -> tuple[int, int]:
    """(count, the reserved bytes 4-15 as one little-endian number)."""
    count, reserved1, reserved2 = _HEADER.unpack_from(page)
    return count, reserved1 | reserved2 << 32


def _entry_offsets(count: int) -> range:
    return range(_HEADER.size, _HEADER.size + count * _ENTRY_SIZE, _ENTRY_SIZE)
