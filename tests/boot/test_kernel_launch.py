"""The SEV launch of a Linux kernel: which bytes are measured, in which order, with the C-bit at
39 in the entry page tables. The expected bytes are rebuilt here from the files and the boot
protocol's constants, not taken from the plan the digest is computed over."""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import pytest

from hv.boot import KERNEL_CBITPOS, kernel_launch_digest, kernel_launch_regions, kernel_plan
from hv.boot.acpi_tables import build_acpi
from tests.boot.test_bzimage import MiB, synthetic

KERNEL = bytes(synthetic(kernel_bytes=0x1230))  # a payload length that is not a multiple of 16
PAYLOAD = KERNEL[4 * 512:]  # setup_sects 3: the protected-mode code starts at sector 4
INITRD = bytes(range(251)) * 41  # 10291 bytes: not a multiple of 16 either
APPEND = "rdinit=/init quiet"
MEM = 64 * MiB
C = 1 << 39


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 16)


def _expected_regions(kernel: bytes, initrd: bytes, append: str, boot_params: bytes, initrd_gpa: int):
    """What an SEV launch of the kernel measures, from the x86 boot protocol and the files."""
    gdt = struct.pack("<4Q", 0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF)
    pml4 = struct.pack("<Q", 0x3000 | C | 3)
    pdpt = struct.pack("<4Q", *(0x4000 + 0x1000 * i | C | 3 for i in range(4)))
    pds = struct.pack("<2048Q", *((i << 21) | C | 0x83 for i in range(2048)))
    cmdline = f"console=ttyS0 tsc_early_khz=2000000 panic=-1 {append}".encode() + b"\0"
    acpi, _rsdp = build_acpi(0xE0000)
    return [(0x1000, gdt), (0x2000, _pad(pml4)), (0x3000, pdpt), (0x4000, pds),
            (0xA000, _pad(cmdline)), (0x1000000, _pad(kernel[4 * 512:])), (0xE0000, _pad(acpi)),
            (0x9000, boot_params), (initrd_gpa, _pad(initrd))]


def test_the_digest_is_sha256_over_the_boot_protocol_bytes_in_launch_order():
    """Scenario: the owner's digest equals SHA-256 over GDT, page tables, command line, kernel,
    ACPI tables, boot_params and initrd, each padded to LAUNCH_UPDATE_DATA's 16 bytes."""
    plan = kernel_plan(KERNEL, INITRD, APPEND, MEM, encrypted=True)
    boot_params = dict(plan.writes)[0x9000]
    expected = _expected_regions(KERNEL, INITRD, APPEND, boot_params, plan.initrd_gpa)
    assert kernel_launch_regions(plan) == expected
    h = hashlib.sha256()
    for _gpa, data in expected:
        h.update(data)
    assert kernel_launch_digest(plan) == h.digest()


def test_the_measured_bytes_hold_the_kernel_payload_and_the_initrd_verbatim():
    plan = kernel_plan(KERNEL, INITRD, APPEND, MEM, encrypted=True)
    regions = dict(kernel_launch_regions(plan))
    load = int.from_bytes(KERNEL[0x258:0x260], "little")  # pref_address
    assert regions[load][:len(PAYLOAD)] == PAYLOAD
    bp = regions[0x9000]
    initrd_gpa, initrd_len = struct.unpack_from("<II", bp, 0x218)  # ramdisk_image, ramdisk_size
    assert initrd_len == len(INITRD) and regions[initrd_gpa][:len(INITRD)] == INITRD
    cmd_ptr = struct.unpack_from("<I", bp, 0x228)[0]
    assert regions[cmd_ptr].rstrip(b"\0") == b"console=ttyS0 tsc_early_khz=2000000 panic=-1 " + APPEND.encode()
    whole = b"".join(data for _gpa, data in kernel_launch_regions(plan))
    assert PAYLOAD in whole and INITRD in whole
    assert all(gpa % 16 == 0 and len(data) % 16 == 0 for gpa, data in kernel_launch_regions(plan))


def test_every_input_changes_the_digest():
    base = kernel_launch_digest(kernel_plan(KERNEL, INITRD, APPEND, MEM, encrypted=True))
    other_kernel = KERNEL[:-1] + bytes([KERNEL[-1] ^ 1])
    other_initrd = INITRD[:-1] + bytes([INITRD[-1] ^ 1])
    for kernel, initrd, append, mem in ((other_kernel, INITRD, APPEND, MEM), (KERNEL, other_initrd, APPEND, MEM),
                                        (KERNEL, INITRD, APPEND + " nokaslr", MEM), (KERNEL, INITRD, "init=/bin/sh", MEM),
                                        (KERNEL, None, APPEND, MEM), (KERNEL, INITRD, APPEND, 128 * MiB)):
        assert kernel_launch_digest(kernel_plan(kernel, initrd, append, mem, encrypted=True)) != base
    assert kernel_launch_digest(kernel_plan(KERNEL, INITRD, APPEND, MEM, encrypted=True)) == base


def _page_table_entries(plan) -> list[int]:
    mem = dict(plan.writes)
    tables = mem[0x2000] + mem[0x3000] + mem[0x4000]  # PML4, PDPT, the four page directories
    entries = [e for (e,) in struct.iter_unpack("<Q", tables)]
    assert len(entries) == 1 + 4 + 4 * 512 and all(e & 1 for e in entries)  # all present
    return entries


def test_the_c_bit_is_in_every_entry_of_the_encrypted_plan_and_in_none_of_the_plain_one():
    assert KERNEL_CBITPOS == 39  # Unicorn's MMU implements 40 physical address bits
    encrypted = kernel_plan(KERNEL, INITRD, APPEND, MEM, encrypted=True)
    plain = kernel_plan(KERNEL, INITRD, APPEND, MEM, encrypted=False)
    assert all(e & C for e in _page_table_entries(encrypted))
    assert not any(e & C for e in _page_table_entries(plain))
    assert encrypted.cr3 == 0x2000 | C and plain.cr3 == 0x2000
    # Apart from the page tables the two plans write the same bytes at the same places.
    strip = {0x2000, 0x3000, 0x4000}
    assert ([w for w in encrypted.writes if w[0] not in strip] == [w for w in plain.writes if w[0] not in strip])


def test_the_plan_puts_the_platform_command_line_first():
    plan = kernel_plan(KERNEL, None, "  console=tty0 ", MEM, encrypted=False)
    assert plan.cmdline == "console=ttyS0 tsc_early_khz=2000000 panic=-1   console=tty0"
    assert kernel_plan(KERNEL, None, "", MEM, encrypted=False).cmdline == (
        "console=ttyS0 tsc_early_khz=2000000 panic=-1")


def test_overlapping_launch_regions_are_refused():
    """Scenario: a write whose 16-byte padding reaches into the next would have LAUNCH_UPDATE_DATA
    measure bytes an earlier update already encrypted."""
    plan = kernel_plan(KERNEL, None, "", MEM, encrypted=True)
    bad = dataclasses.replace(plan, writes=plan.writes + [(0x9FF8, b"x")])
    with pytest.raises(ValueError, match="overlaps"):
        kernel_launch_regions(bad)
    unaligned = dataclasses.replace(plan, writes=plan.writes + [(0x20008, b"x" * 16)])
    with pytest.raises(ValueError, match="unaligned"):
        kernel_launch_regions(unaligned)
