"""The ACPI tables a stock Linux kernel needs to power a PC off: RSDP, XSDT (and RSDT), FADT,
FACS and a DSDT holding only the \\_S5 sleep package.

Layouts and field offsets are those of the ACPI 6.3 specification, chapter 5.2 (RSDP 5.2.5,
header 5.2.6, RSDT 5.2.7, XSDT 5.2.8, FADT 5.2.9 with the generic address structure of 5.2.3.2,
FACS 5.2.10, DSDT 5.2.11.1) and the AML encoding of chapter 20. There is no MADT: the guest runs
with the 8259 PICs (Linux's "nolapic noapic"), and no interpreter-visible devices beyond \\_S5.

`build_acpi(base_gpa)` gives the bytes to copy at `base_gpa` and the RSDP's address, which the
boot loader puts in boot_params.acpi_rsdp_addr (offset 0x070); the range should be e820 type 3
(ACPI reclaimable) or reserved.

The tables are part of what the boot loader writes, so under SEV they are measured: they live
here, below the VMM, so the guest owner builds the same bytes from the same `PmLayout` the
platform's devices (hv.vmm.acpi) sit at.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ACPI_OEM_ID", "SLP_TYP_S5", "PmLayout", "build_acpi", "dsdt_aml"]

# The sleep type that means soft-off here; the DSDT's \_S5 package says so to the guest.
SLP_TYP_S5 = 5


@dataclass(frozen=True)
class PmLayout:
    """Where the PM register blocks sit in port space, and how wide the timer is."""
    pm1a_evt: int = 0x600
    pm1a_cnt: int = 0x604
    pm_tmr: int = 0x608
    reset_port: int = 0xCF9
    sci_irq: int = 9
    timer_32bit: bool = True

    PM1_EVT_LEN = 4
    PM1_CNT_LEN = 2
    PM_TMR_LEN = 4

    @property
    def base(self) -> int:
        return self.pm1a_evt

    @property
    def length(self) -> int:
        return self.pm_tmr + self.PM_TMR_LEN - self.pm1a_evt


ACPI_OEM_ID = b"HVPC  "
OEM_TABLE_ID = b"HVPLATFM"
CREATOR_ID = b"HV  "

HEADER = struct.Struct("<4sIBB6s8sI4sI")   # 36 bytes: signature .. creator revision
FADT_LENGTH = 276                          # ACPI 6.x FADT, major version 6
FADT_MINOR = 3

# FADT flags (5.2.9, table 5-34)
WBINVD = 1 << 0
PROC_C1 = 1 << 2
PWR_BUTTON = 1 << 4     # set: no fixed-feature power button
SLP_BUTTON = 1 << 5     # set: no fixed-feature sleep button
FIX_RTC = 1 << 6        # set: RTC wake status is not in the fixed registers
TMR_VAL_EXT = 1 << 8
RESET_REG_SUP = 1 << 10
# IA-PC boot architecture flags (5.2.9.3)
LEGACY_DEVICES = 1 << 0
HAS_8042 = 1 << 1
VGA_NOT_PRESENT = 1 << 2

SYSTEM_IO = 1
ACCESS_BYTE, ACCESS_WORD, ACCESS_DWORD = 1, 2, 3
RESET_VALUE = 0x06
CENTURY_INDEX = 0x32

# AML opcodes (20.2)
NAME_OP, PACKAGE_OP, BYTE_PREFIX, ZERO_OP, ROOT_CHAR = 0x08, 0x12, 0x0A, 0x00, 0x5C


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    header = HEADER.pack(signature, HEADER.size + len(body), revision, 0, ACPI_OEM_ID,
                         OEM_TABLE_ID, 1, CREATOR_ID, 1)
    table = bytearray(header + body)
    table[9] = _checksum(table)
    return bytes(table)


def _gas(port: int, bit_width: int, access_size: int) -> bytes:
    """A generic address structure for a system-I/O register."""
    return struct.pack("<BBBBQ", SYSTEM_IO, bit_width, 0, access_size, port)


def _aml_byte(value: int) -> bytes:
    return bytes((ZERO_OP,)) if value == 0 else bytes((BYTE_PREFIX, value))


def dsdt_aml(slp_typ: int = SLP_TYP_S5) -> bytes:
    """Name (\\_S5, Package (4) { slp_typ, slp_typ, 0, 0 }): SLP_TYPa, SLP_TYPb, reserved."""
    elements = b"".join(_aml_byte(v) for v in (slp_typ, slp_typ, 0, 0))
    body = bytes((4,)) + elements                      # NumElements, then the elements
    pkg_length = 1 + len(body)                          # a one-byte PkgLength counts itself
    assert pkg_length < 64
    return bytes((NAME_OP, ROOT_CHAR)) + b"_S5_" + bytes((PACKAGE_OP, pkg_length)) + body


def _fadt(facs: int, dsdt: int, pm: PmLayout) -> bytes:
    timer_flag = TMR_VAL_EXT if pm.timer_32bit else 0
    body = bytearray(FADT_LENGTH - HEADER.size)

    def put(offset: int, fmt: str, *values: int) -> None:
        struct.pack_into("<" + fmt, body, offset - HEADER.size, *values)

    put(36, "II", facs, dsdt)                           # FIRMWARE_CTRL, DSDT
    put(46, "HI", pm.sci_irq, 0)                        # SCI_INT, SMI_CMD (0: always ACPI)
    put(56, "IIIIII", pm.pm1a_evt, 0, pm.pm1a_cnt, 0, 0, pm.pm_tmr)   # PM1a/b EVT, CNT, PM2, TMR
    put(88, "BBBB", pm.PM1_EVT_LEN, pm.PM1_CNT_LEN, 0, pm.PM_TMR_LEN)
    put(96, "HH", 0x0FFF, 0x0FFF)                       # P_LVL2/3_LAT: no C2, no C3
    put(108, "BH", CENTURY_INDEX, LEGACY_DEVICES | HAS_8042 | VGA_NOT_PRESENT)
    put(112, "I", WBINVD | PROC_C1 | PWR_BUTTON | SLP_BUTTON | FIX_RTC | RESET_REG_SUP
        | timer_flag)
    body[116 - HEADER.size:128 - HEADER.size] = _gas(pm.reset_port, 8, ACCESS_BYTE)
    put(128, "B", RESET_VALUE)
    put(131, "B", FADT_MINOR)
    put(132, "QQ", facs, dsdt)                          # X_FIRMWARE_CTRL, X_DSDT
    for offset, port, length, access in ((148, pm.pm1a_evt, pm.PM1_EVT_LEN, ACCESS_WORD),
                                         (172, pm.pm1a_cnt, pm.PM1_CNT_LEN, ACCESS_WORD),
                                         (208, pm.pm_tmr, pm.PM_TMR_LEN, ACCESS_DWORD)):
        body[offset - HEADER.size:offset - HEADER.size + 12] = _gas(port, 8 * length, access)
    return _table(b"FACP", 6, bytes(body))


def _facs() -> bytes:
    # Signature, length, hardware signature, waking vector, global lock, flags,
    # X waking vector, version 2, reserved, OSPM flags, reserved.
    return struct.pack("<4sIIIIIQB3sI24s", b"FACS", 64, 0, 0, 0, 0, 0, 2, b"", 0, b"")


def _rsdp(rsdt: int, xsdt: int) -> bytes:
    first = bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, ACPI_OEM_ID, 2, rsdt))
    first[8] = _checksum(first)
    whole = bytearray(first + struct.pack("<IQB3s", 36, xsdt, 0, b""))
    whole[32] = _checksum(whole)
    return bytes(whole)


def _align(offset: int, alignment: int) -> int:
    return -(-offset // alignment) * alignment


def build_acpi(base_gpa: int, pm: PmLayout = PmLayout()) -> tuple[bytes, int]:
    """The tables laid out from `base_gpa` (64-byte aligned, below 4 GiB): (blob, rsdp_gpa)."""
    if base_gpa % 64 or base_gpa + 0x1000 > 1 << 32:
        raise ValueError(f"ACPI tables need a 64-byte aligned base below 4 GiB, not {base_gpa:#x}")
    dsdt = _table(b"DSDT", 2, dsdt_aml())
    rsdp_at, facs_at, xsdt_at = 0, 64, 128              # the FACS must be 64-byte aligned
    rsdt_at = _align(xsdt_at + HEADER.size + 8, 16)
    fadt_at = _align(rsdt_at + HEADER.size + 4, 16)
    dsdt_at = _align(fadt_at + FADT_LENGTH, 16)
    parts = {
        facs_at: _facs(),
        xsdt_at: _table(b"XSDT", 1, struct.pack("<Q", base_gpa + fadt_at)),
        rsdt_at: _table(b"RSDT", 1, struct.pack("<I", base_gpa + fadt_at)),
        fadt_at: _fadt(base_gpa + facs_at, base_gpa + dsdt_at, pm),
        dsdt_at: dsdt,
        rsdp_at: _rsdp(base_gpa + rsdt_at, base_gpa + xsdt_at),
    }
    blob = bytearray(dsdt_at + len(dsdt))
    for offset, data in parts.items():
        blob[offset:offset + len(data)] = data
    return bytes(blob), base_gpa + rsdp_at
