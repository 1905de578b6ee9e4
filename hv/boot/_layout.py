"""The guest-physical layout at entry, and which bytes the measured launch covers, in what order.

The guest owner recomputes the launch digest from these functions and the image file alone,
so everything here must be a deterministic function of (image, mem_size, cbitpos).
"""

from __future__ import annotations

import struct

from hv.boot._image import IMAGE_BASE, parse_image

__all__ = [
    "BOOT_INFO_GPA",
    "BOOT_INFO_MAGIC",
    "BOOT_INFO_SECRET_RELEASE",
    "BOOT_STACK_TOP",
    "IMAGE_BASE",
    "MAX_MEM",
    "MIN_MEM",
    "PAGE_TABLES_GPA",
    "SECRET_GPA",
    "SECRET_MAX",
    "boot_info",
    "boot_page_tables",
    "check_mem",
    "image_regions",
    "launch_regions",
]

PAGE = 0x1000
PML4_GPA = 0x1000
PDPT_GPA = 0x2000
PT0_GPA = 0x3000
PD_GPA = 0x4000  # one page directory per GiB, up to four
PAGE_TABLES_GPA = PML4_GPA
BOOT_INFO_GPA = 0x8000
SECRET_GPA = 0x9000
SECRET_MAX = 0x1000
BOOT_STACK_TOP = 0x10000
BOOT_INFO_MAGIC = 0x49425648  # "HVBI"
BOOT_INFO_SECRET_RELEASE = 1 << 0  # flags bit 0: secret release offered (SEV-SNP, port 0x502)
BOOT_INFO_FLAGS = BOOT_INFO_SECRET_RELEASE
MIN_MEM = 4 << 20
MAX_MEM = 4 << 30
_GIB = 1 << 30
_TWO_MIB = 2 << 20

_P, _RW, _PS = 0x1, 0x2, 0x80


def boot_page_tables(mem_size: int, cbitpos: int | None) -> list[tuple[int, bytes]]:
    """hv's boot page tables as (gpa, page bytes), in measurement order.

    An identity map of all guest memory: 4 KiB pages below 2 MiB (so a guest can share single
    pages there), 2 MiB pages above. With `cbitpos` set (an encrypted guest) every entry carries
    the C-bit except the leaf of the boot information page, which the hypervisor must write.
    Page 0 stays unmapped so that null pointers fault.
    """
    _check_mem(mem_size)
    c = 0 if cbitpos is None else 1 << cbitpos
    ngib = (mem_size + _GIB - 1) // _GIB
    pml4 = [0] * 512
    pml4[0] = PDPT_GPA | _P | _RW | c
    pdpt = [0] * 512
    pds = []
    for g in range(ngib):
        pdpt[g] = (PD_GPA + g * PAGE) | _P | _RW | c
        pd = [0] * 512
        for j in range(512):
            base = g * _GIB + j * _TWO_MIB
            if base >= mem_size:
                break
            pd[j] = (PT0_GPA | _P | _RW | c) if base == 0 else (base | _P | _RW | _PS | c)
        pds.append(pd)
    pt0 = [0] * 512
    for k in range(1, 512):
        pt0[k] = (k * PAGE) | _P | _RW | (0 if k * PAGE == BOOT_INFO_GPA else c)
    tables = [(PML4_GPA, pml4), (PDPT_GPA, pdpt), (PT0_GPA, pt0)]
    tables += [(PD_GPA + g * PAGE, pd) for g, pd in enumerate(pds)]
    return [(gpa, struct.pack("<512Q", *entries)) for gpa, entries in tables]


def boot_info(mem_size: int, secret_len: int = 0, flags: int = 0) -> bytes:
    """The boot information page (shared, written by the hypervisor after the launch).

    `flags` is a combination of the BOOT_INFO_* bits (BOOT_INFO_SECRET_RELEASE: an SEV-SNP
    guest may ask for its secret on port 0x502)."""
    if not 0 <= secret_len <= SECRET_MAX:
        raise ValueError(f"secret of {secret_len} bytes does not fit the {SECRET_MAX}-byte secret page")
    if flags & ~BOOT_INFO_FLAGS:
        raise ValueError(f"boot information flags {flags:#x} has bits outside {BOOT_INFO_FLAGS:#x}")
    head = struct.pack("<IIQQII", BOOT_INFO_MAGIC, 1, mem_size, SECRET_GPA, secret_len, flags)
    return head + bytes(PAGE - len(head))


def image_regions(image: bytes, mem_size: int) -> list[tuple[int, bytes]]:
    """The image's file-backed bytes as 16-byte aligned (gpa, bytes) regions, ascending.

    LAUNCH_UPDATE_DATA works on 16-byte aligned ranges, so each segment is widened to 16-byte
    boundaries (the padding measured as what memory holds there: zeros or a neighbour's bytes),
    and segments that then touch are merged so no byte is measured twice.
    """
    loaded = parse_image(image, mem_size)
    spans: list[list[int]] = []
    for s in loaded.segments:
        if not s.data:
            continue
        lo, hi = s.gpa & ~15, (s.gpa + len(s.data) + 15) & ~15
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    regions = []
    for lo, hi in spans:
        buf = bytearray(hi - lo)
        for s in loaded.segments:
            a, b = max(lo, s.gpa), min(hi, s.gpa + len(s.data))
            if a < b:
                buf[a - lo:b - lo] = s.data[a - s.gpa:b - s.gpa]
        regions.append((lo, bytes(buf)))
    return regions


def launch_regions(image: bytes, mem_size: int, cbitpos: int) -> list[tuple[int, bytes]]:
    """Everything LAUNCH_UPDATE_DATA encrypts and measures, in issue order: tables, then image."""
    return boot_page_tables(mem_size, cbitpos) + image_regions(image, mem_size)


def check_mem(mem_size: int) -> None:
    """Raise ValueError unless `mem_size` is a guest memory size hv can lay out."""
    _check_mem(mem_size)


def _check_mem(mem_size: int) -> None:
    if not MIN_MEM <= mem_size <= MAX_MEM or mem_size % _TWO_MIB:
        raise ValueError(
            f"guest memory must be a multiple of 2 MiB between {MIN_MEM >> 20} MiB and "
            f"{MAX_MEM >> 30} GiB, not {mem_size:#x}")
