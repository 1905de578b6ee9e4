"""The Linux boot layout: boot_params, e820, command line, initrd and entry, read back from the
bytes written at the offsets of the boot protocol (Documentation/x86/boot.rst, struct
boot_params), not through the builder's own constants."""

from __future__ import annotations

import struct

import pytest

from hv.boot.bzimage import BzImageError
from hv.boot.linux import linux_boot
from tests.boot.test_bzimage import MiB, synthetic


def _memory(plan) -> dict[int, bytes]:
    return dict(plan.writes)


def test_boot_params_carry_the_command_line_initrd_e820_and_rsdp():
    kernel = bytes(synthetic())
    initrd = b"\x07" * 5000
    plan = linux_boot(kernel, initrd, "console=ttyS0 quiet", 64 * MiB, (b"RSD PTR " + bytes(28), 0xE0000))
    mem = _memory(plan)
    bp = mem[0x9000]
    assert len(bp) == 4096
    assert bp[0x1F1:0x202] == kernel[0x1F1:0x202]  # the setup header, copied
    assert bp[0x210] == 0xFF  # type_of_loader: undefined loader
    assert bp[0x211] & 0x80  # CAN_USE_HEAP
    cmd_ptr = struct.unpack_from("<I", bp, 0x228)[0]
    assert mem[cmd_ptr] == b"console=ttyS0 quiet\0"
    image, size = struct.unpack_from("<II", bp, 0x218)
    assert size == 5000 and mem[image] == initrd
    assert image % 4096 == 0 and image + size <= 64 * MiB and image >= 0x1000000 + 0x100000
    assert struct.unpack_from("<Q", bp, 0x070)[0] == 0xE0000  # acpi_rsdp_addr
    n = bp[0x1E8]
    e820 = [struct.unpack_from("<QQI", bp, 0x2D0 + 20 * i) for i in range(n)]
    assert e820 == [(0, 0x9FC00, 1), (0x9FC00, 0x100000 - 0x9FC00, 2), (0x100000, 63 * MiB, 1)]
    assert mem[0x1000000] == kernel[4 * 512:]  # setup_sects 3: the code starts at 4 sectors
    assert plan.entry == 0x1000200 and plan.boot_params == 0x9000


def test_entry_page_tables_map_the_first_4_gib_one_to_one():
    plan = linux_boot(bytes(synthetic()), None, "", 64 * MiB)
    mem = _memory(plan)
    cr3 = plan.cr3
    pml4 = struct.unpack_from("<Q", mem[cr3], 0)[0]
    pdpt = mem[pml4 & ~0xFFF]
    for gib in (0, 3):
        pd_addr = struct.unpack_from("<Q", pdpt, 8 * gib)[0] & ~0xFFF
        pd = mem[0x4000][pd_addr - 0x4000:pd_addr - 0x4000 + 4096]
        entry = struct.unpack_from("<Q", pd, 8 * 5)[0]
        assert entry == (gib << 30) + (5 << 21) | 0x83  # present, writable, 2 MiB page
    base, limit = plan.gdtr
    gdt = mem[base]
    assert struct.unpack_from("<Q", gdt, 0x10)[0] == 0x00AF9B000000FFFF  # __BOOT_CS: 64-bit code
    assert struct.unpack_from("<Q", gdt, 0x18)[0] == 0x00CF93000000FFFF  # __BOOT_DS
    assert limit == len(gdt) - 1


def test_a_command_line_longer_than_the_kernel_takes_is_refused():
    with pytest.raises(BzImageError, match="command line is 2048 bytes; this kernel takes at most 2047"):
        linux_boot(bytes(synthetic()), None, "x" * 2048, 64 * MiB)


def test_an_initrd_that_does_not_fit_is_refused():
    with pytest.raises(BzImageError, match="initrd of .* does not fit"):
        linux_boot(bytes(synthetic(init_size=60 * MiB)), b"\0" * (8 * MiB), "", 80 * MiB)


def test_a_kernel_whose_init_size_exceeds_memory_is_refused_without_an_initrd():
    with pytest.raises(BzImageError, match="too small for the kernel"):
        linux_boot(bytes(synthetic(init_size=60 * MiB)), None, "", 64 * MiB)
