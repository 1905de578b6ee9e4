"""bzImage parsing: synthetic setup headers written byte by byte, every refusal, and the real
Debian kernel when tools/linux.py has fetched it.

The synthetic images are built here from the offsets in the boot protocol (Documentation/x86/
boot.rst), with plain byte writes, not with the parser's own field table, so a wrong offset in the
parser cannot hide behind the same wrong offset in the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hv.boot.bzimage import BzImageError, parse_bzimage, place_initrd

REPO = Path(__file__).resolve().parents[2]
DEBIAN_KERNEL = REPO / "build" / "linux" / "vmlinuz"

MiB = 1 << 20


def put(buf: bytearray, offset: int, value: int, size: int) -> None:
    buf[offset:offset + size] = value.to_bytes(size, "little")


def synthetic(setup_sects: int = 3, kernel_bytes: int = 0x800, version: int = 0x020F,
              xloadflags: int = 0x3, init_size: int = 0x100000, pref_address: int = 0x1000000,
              kernel_alignment: int = 0x200000, loadflags: int = 0x1,
              initrd_addr_max: int = 0x7FFFFFFF) -> bytearray:
    """A minimal bzImage: setup sectors with a header, then `kernel_bytes` of 0xCC as the code."""
    setup_size = ((setup_sects or 4) + 1) * 512
    buf = bytearray(setup_size)
    buf[0x1F1] = setup_sects
    put(buf, 0x1F4, kernel_bytes // 16, 4)  # syssize
    buf[0x1FE], buf[0x1FF] = 0x55, 0xAA  # boot flag 0xAA55, little-endian
    buf[0x200], buf[0x201] = 0xEB, 0x6A  # jmp short over the header: it ends at 0x202 + 0x6a
    buf[0x202:0x206] = b"HdrS"
    put(buf, 0x206, version, 2)
    put(buf, 0x20E, 0x300 - 0x200, 2)  # kernel_version: the string at 0x300
    buf[0x300:0x30C] = b"6.1.0-test \0"
    buf[0x211] = loadflags
    put(buf, 0x214, 0x100000, 4)  # code32_start
    put(buf, 0x22C, initrd_addr_max, 4)
    put(buf, 0x230, kernel_alignment, 4)
    buf[0x234] = 1  # relocatable_kernel
    buf[0x235] = 21  # min_alignment: 2 MiB
    put(buf, 0x236, xloadflags, 2)
    put(buf, 0x238, 2047, 4)  # cmdline_size
    put(buf, 0x248, 0x2CC, 4)  # payload_offset
    put(buf, 0x24C, 0x400, 4)  # payload_length
    put(buf, 0x258, pref_address, 8)
    put(buf, 0x260, init_size, 4)
    put(buf, 0x264, 0x190, 4)  # handover_offset
    return buf + b"\xCC" * kernel_bytes


# -- a well-formed image ---------------------------------------------------------------------------


def test_synthetic_header_fields_are_read_at_their_offsets():
    img = parse_bzimage(synthetic())
    h = img.header
    assert (h.setup_sects, h.version, h.version_str) == (3, 0x020F, "2.15")
    assert h.syssize == 0x80
    assert h.has_64bit_entry and h.can_load_above_4g and h.relocatable
    assert h.pref_address == 0x1000000
    assert h.kernel_alignment == 0x200000
    assert h.init_size == 0x100000
    assert h.cmdline_size == 2047
    assert h.initrd_addr_max == 0x7FFFFFFF
    assert h.min_alignment == 21
    assert (h.payload_offset, h.payload_length, h.handover_offset) == (0x2CC, 0x400, 0x190)
    assert h.code32_start == 0x100000
    assert img.release == "6.1.0-test "


def test_protected_mode_code_starts_after_setup_sects_plus_one_sectors():
    data = synthetic(setup_sects=3, kernel_bytes=0x800)
    img = parse_bzimage(data)
    assert img.kernel_offset == 4 * 512
    assert img.kernel_size == 0x800
    assert img.kernel == b"\xCC" * 0x800
    # What goes into boot_params at 0x1f1: from setup_sects up to 0x202 + the jump's offset.
    assert img.setup_bytes == bytes(data[0x1F1:0x26C])


def test_setup_sects_zero_means_four():
    img = parse_bzimage(synthetic(setup_sects=0))
    assert img.kernel_offset == 5 * 512
    assert img.kernel == b"\xCC" * 0x800


def test_protocol_2_12_without_above_4g_is_accepted():
    img = parse_bzimage(synthetic(version=0x020C, xloadflags=0x1))
    assert img.header.version_str == "2.12"
    assert img.header.has_64bit_entry and not img.header.can_load_above_4g


def test_trailing_bytes_after_the_kernel_are_ignored():
    img = parse_bzimage(synthetic() + b"\0" * 100)
    assert img.kernel == b"\xCC" * 0x800


# -- refusals ----------------------------------------------------------------------------------


def refusal(data) -> str:
    with pytest.raises(BzImageError) as e:
        parse_bzimage(bytes(data))
    message = str(e.value)
    assert "\n" not in message
    return message


def test_not_a_bzimage_without_the_boot_flag():
    data = synthetic()
    data[0x1FE] = 0
    assert refusal(data).startswith("not a bzImage") and "0xAA55" in refusal(data)


def test_not_a_bzimage_without_hdrs():
    data = synthetic()
    data[0x202:0x206] = b"HdrX"
    assert "HdrS" in refusal(data) and refusal(data).startswith("not a bzImage")


def test_not_a_bzimage_an_elf_file():
    assert refusal(b"\x7fELF" + bytes(1000)).startswith("not a bzImage")


def test_empty_and_tiny_files_are_not_bzimages():
    assert refusal(b"").startswith("not a bzImage")
    assert refusal(bytes(100)).startswith("not a bzImage")


def test_truncated_before_the_magic():
    assert refusal(synthetic()[:0x204]).startswith("truncated")


def test_truncated_inside_the_setup_header():
    msg = refusal(synthetic()[:0x240])
    assert msg.startswith("truncated") and "setup header" in msg


def test_truncated_inside_the_protected_mode_code():
    data = synthetic(setup_sects=3, kernel_bytes=0x800)
    msg = refusal(data[:-1])
    assert msg.startswith("truncated") and "2048 of setup" in msg and "2048 of kernel" in msg


def test_truncated_inside_the_setup_sectors():
    assert refusal(synthetic(setup_sects=30)[:3000]).startswith("truncated")


def test_protocol_older_than_2_12_is_refused():
    msg = refusal(synthetic(version=0x020B))
    assert "2.11" in msg and "2.12" in msg and "too old" in msg


def test_no_64bit_entry_is_refused():
    msg = refusal(synthetic(xloadflags=0x2))
    assert msg.startswith("no 64-bit entry") and "xloadflags" in msg


def test_a_zimage_is_refused():
    assert "LOADED_HIGH" in refusal(synthetic(loadflags=0))


def test_alignment_that_is_not_a_power_of_two_is_refused():
    assert "kernel_alignment" in refusal(synthetic(kernel_alignment=0x300000))


def test_init_size_smaller_than_the_code_is_refused():
    assert "init_size" in refusal(synthetic(init_size=0x400, kernel_bytes=0x800))


def test_error_is_a_value_error():
    assert issubclass(BzImageError, ValueError)


# -- initrd placement --------------------------------------------------------------------------


def test_initrd_goes_to_the_top_of_memory_page_aligned():
    h = parse_bzimage(synthetic(init_size=0x100000)).header
    # 64 MiB of RAM, 0x1800-byte initrd: the top page-aligned start with the end inside RAM.
    assert place_initrd(h, 0x1800, 64 * MiB) == 0x4000000 - 0x2000
    assert place_initrd(h, 0x1000, 64 * MiB) == 0x4000000 - 0x1000


def test_initrd_just_fits_above_init_size():
    h = parse_bzimage(synthetic(init_size=0x100000)).header
    # The kernel claims 0x1000000..0x1100000; an initrd of 1 MiB fits in exactly 0x1200000.
    assert place_initrd(h, MiB, 0x1200000) == 0x1100000
    msg = pytest.raises(BzImageError, place_initrd, h, MiB + 1, 0x1200000).value.args[0]
    # One byte more memory is enough: the initrd starts at the same page and ends one byte on.
    assert "does not fit" in msg and "needs at least 0x1200001 bytes" in msg
    assert place_initrd(h, MiB + 1, 0x1200001) == 0x1100000


def test_memory_below_the_kernel_end_is_refused():
    h = parse_bzimage(synthetic(init_size=0x4000000)).header
    msg = pytest.raises(BzImageError, place_initrd, h, 0, 64 * MiB).value.args[0]
    assert "too small for the kernel" in msg and "init_size" in msg


def test_initrd_addr_max_caps_an_image_that_cannot_load_above_4g():
    h = parse_bzimage(synthetic(xloadflags=0x1, initrd_addr_max=0x37FFFFFF)).header
    assert place_initrd(h, 0x1000, 2048 * MiB) == 0x38000000 - 0x1000
    h = parse_bzimage(synthetic(xloadflags=0x1, initrd_addr_max=0x10FFFFF)).header
    msg = pytest.raises(BzImageError, place_initrd, h, 0x1000, 2048 * MiB).value.args[0]
    assert "initrd_addr_max" in msg


# -- the real kernel ---------------------------------------------------------------------------


@pytest.mark.skipif(not DEBIAN_KERNEL.is_file(),
                    reason="no Debian kernel fetched: run python tools/linux.py fetch")
def test_debian_kernel():
    """Debian 12's 6.1 amd64 kernel: protocol 2.15, 64-bit entry, loads at 16 MiB, 2 MiB aligned."""
    data = DEBIAN_KERNEL.read_bytes()
    img = parse_bzimage(data)
    h = img.header
    assert h.version >= 0x020F
    assert h.has_64bit_entry
    assert h.pref_address == 0x1000000
    assert h.kernel_alignment == 0x200000
    assert h.relocatable
    assert img.release.startswith("6.1.0-")
    # The whole file is setup plus protected-mode code (build.c sizes syssize to the end).
    assert img.kernel_offset == (data[0x1F1] + 1) * 512
    assert img.kernel_offset + img.kernel_size == len(data)
    # The kernel needs more room to decompress than its compressed size.
    assert h.init_size > img.kernel_size
    end = h.pref_address + h.init_size
    assert place_initrd(h, MiB, end + MiB) == end
