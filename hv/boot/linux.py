"""Where a 64-bit boot loader puts a Linux kernel: boot_params, the command line, the initrd, the
e820 map, the ACPI tables, the entry page tables and GDT. A pure function of the files.

Layout (guest-physical), after Documentation/x86/boot.rst's "64-bit BOOT PROTOCOL":
  0x1000   GDT: __BOOT_CS 0x10 (64-bit code), __BOOT_DS 0x18 (data)
  0x2000   PML4, 0x3000 PDPT, 0x4000-0x7fff four page directories: 0-4 GiB identity, 2 MiB pages
  0x9000   boot_params (the "zero page"), 0xa000 the command line
  0x9fc00  up to 1 MiB: reserved in the e820 map (ACPI tables at 0xe0000); under SEV-SNP also
           0xd0000 the validation stub (guests/linux/snp-validate.S), 0xd1000 the CC blob,
           0xd2000 the PSP's secrets page, 0xd3000 the CPUID page (hv.boot._snp)
  pref_address (16 MiB): the protected-mode code; the kernel decompresses itself from there and
           needs init_size bytes
  the initrd as high as it fits (place_initrd)
Entry: RIP = load address + 0x200, RSI = boot_params, long mode with those tables, interrupts off.
Under SEV-SNP the vCPU starts in the validation stub instead, which validates every page of
memory and then enters the kernel there; boot_params.cc_blob_address points at the CC blob
(struct cc_blob_sev_info), which tells the kernel where its secrets and CPUID pages are.

`kernel_plan` is the whole plan `hv run --kernel` loads: hv's platform command line before the
user's, and the PC platform's ACPI tables. Under SEV every write of it goes through
LAUNCH_UPDATE_DATA in list order (`kernel_launch_regions`), so the guest owner predicts the launch
digest from the same function and the same files.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hv.boot.acpi_tables import PmLayout, build_acpi
from hv.boot.bzimage import BzImage, BzImageError, parse_bzimage, place_initrd

__all__ = ["ACPI_GPA", "BOOT_PARAMS_GPA", "CC_BLOB_GPA", "CMDLINE_GPA", "E820_RAM", "E820_RESERVED",
           "SNP_CPUID_GPA", "SNP_SECRETS_GPA", "SNP_STUB_GPA",
           "KERNEL_CBITPOS", "KERNEL_DEFAULT_MEM", "LinuxBoot", "PLATFORM_CMDLINE", "TSC_KHZ",
           "kernel_cmdline", "kernel_launch_regions", "kernel_plan", "linux_boot"]

# The TSC rate the platform gives the kernel (tsc_early_khz), so it need not calibrate.
TSC_KHZ = 2_000_000
# What hv puts before the user's --append. It is measured with the rest of the command line.
PLATFORM_CMDLINE = f"console=ttyS0 tsc_early_khz={TSC_KHZ} panic=-1"
KERNEL_DEFAULT_MEM = 256 << 20  # `hv run --kernel` without --mem
# The C-bit of an encrypted kernel: Unicorn's MMU implements 40 physical address bits, so the
# highest position a guest can use is 39 (EPYC parts report 47 or 51 in CPUID 0x8000001F).
KERNEL_CBITPOS = 39
_LAUNCH_ALIGN = 16  # LAUNCH_UPDATE_DATA takes 16-byte aligned addresses and lengths

GDT_GPA, PML4_GPA, PDPT_GPA, PD_GPA = 0x1000, 0x2000, 0x3000, 0x4000
BOOT_PARAMS_GPA, CMDLINE_GPA = 0x9000, 0xA000
LOW_RAM_END = 0x9FC00
ACPI_GPA = 0xE0000
E820_RAM, E820_RESERVED = 1, 2
BOOT_CS, BOOT_DS = 0x10, 0x18
# SEV-SNP, in the reserved hole below 1 MiB (the kernel keeps its hands off reserved memory, and
# the CC blob must outlive early boot: the sev-guest driver finds the secrets page through it)
SNP_STUB_GPA, CC_BLOB_GPA, SNP_SECRETS_GPA, SNP_CPUID_GPA = 0xD0000, 0xD1000, 0xD2000, 0xD3000
_CC_BLOB_MAGIC = 0x45444D41  # "AMDE"
# guests/linux/snp-validate.S assembled (as --64, objcopy -O binary -j .text): validate every
# page of [0, mem_end), then jump to entry; mem_end and entry are its last two quadwords.
_SNP_STUB = bytes.fromhex(
    "4c8b05510000004c8b0d520000004531d24c89d031c9ba01000000f20f01ff85c075194981c2001000004d39"
    "c272e231c031d24531c04531d241ffe1c1e0100d0011000031d2b9300101c00f30f30f01d9f4ebfd0f1f4000"
    "00000000000000000000000000000000")
_GDT = (0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF)
_IDENTITY_GIB = 4

# boot_params fields (struct boot_params, arch/x86/include/uapi/asm/bootparam.h)
_ACPI_RSDP_ADDR = 0x070
_CC_BLOB_ADDRESS = 0x13C
_SETUP_DATA = 0x250  # hdr.setup_data: the physical address of a linked list of setup_data nodes
_SETUP_CC_BLOB = 7
_CC_SETUP_DATA_OFFSET = 0x40  # where in the CC blob's page the setup_data node naming it sits
_EXT_RAMDISK_IMAGE, _EXT_RAMDISK_SIZE, _EXT_CMD_LINE_PTR = 0x0C0, 0x0C4, 0x0C8
_E820_ENTRIES, _E820_TABLE, _E820_MAX = 0x1E8, 0x2D0, 128
_TYPE_OF_LOADER, _LOADFLAGS = 0x210, 0x211
_RAMDISK_IMAGE, _RAMDISK_SIZE, _CMD_LINE_PTR = 0x218, 0x21C, 0x228
_CAN_USE_HEAP = 0x80
_LOADER_UNDEFINED = 0xFF  # "a boot loader without an assigned id"


@dataclass(frozen=True)
class LinuxBoot:
    """What to write into guest memory and how to enter the kernel."""

    image: BzImage
    writes: list[tuple[int, bytes]] = field(repr=False)
    entry: int
    boot_params: int
    initrd_gpa: int
    cmdline: str
    e820: list[tuple[int, int, int]]
    kernel_end: int  # the top of what the decompressor may use (load address + init_size)
    cbit: int = 0  # the C-bit position of an encrypted guest's entry page tables (0: plain)
    snp: bool = False  # an SEV-SNP plan: the CC blob and the validation stub are in `writes`

    @property
    def start(self) -> int:
        """Where the boot vCPU starts: the kernel's entry, or under SEV-SNP the stub before it."""
        return SNP_STUB_GPA if self.snp else self.entry

    @property
    def gdtr(self) -> tuple[int, int]:
        return GDT_GPA, len(_GDT) * 8 - 1

    @property
    def cr3(self) -> int:
        return PML4_GPA | (1 << self.cbit if self.cbit else 0)


def _page_tables(c: int) -> list[tuple[int, bytes]]:
    pml4 = struct.pack("<Q", PDPT_GPA | c | 3)
    pdpt = b"".join(struct.pack("<Q", (PD_GPA + 0x1000 * i) | c | 3) for i in range(_IDENTITY_GIB))
    pds = b"".join(struct.pack("<Q", (i << 21) | c | 0x83) for i in range(512 * _IDENTITY_GIB))
    return [(PML4_GPA, pml4), (PDPT_GPA, pdpt), (PD_GPA, pds)]


def snp_stub(mem_end: int, entry: int) -> bytes:
    """The validation stub with its two parameters: validate [0, mem_end), then enter `entry`."""
    return _SNP_STUB[:-16] + struct.pack("<QQ", mem_end, entry)


def cc_blob() -> bytes:
    """The CC blob's page: struct cc_blob_sev_info (arch/x86/include/asm/sev.h: magic, version
    1, the secrets page's and the CPUID page's addresses and lengths), then at 0x40 the
    setup_data node (type SETUP_CC_BLOB, struct cc_setup_data) that names it to a kernel.

    Linux 6.1's decompressor looks for the blob in the EFI configuration table or in setup_data
    only; the decompressed kernel looks at boot_params.cc_blob_address first, which the
    decompressor sets to what it found. hv gives both."""
    blob = struct.pack("<IHHQIIQII", _CC_BLOB_MAGIC, 1, 0, SNP_SECRETS_GPA, 0x1000, 0,
                       SNP_CPUID_GPA, 0x1000, 0)
    node = struct.pack("<QIII", 0, _SETUP_CC_BLOB, 4, CC_BLOB_GPA)  # next, type, len, address
    return blob.ljust(_CC_SETUP_DATA_OFFSET, b"\0") + node


def linux_boot(kernel: bytes, initrd: bytes | None, cmdline: str, mem_size: int,
               acpi: tuple[bytes, int] | None = None, cbit: int = 0,
               snp: bool = False) -> LinuxBoot:
    """The boot plan for `kernel` (a bzImage) with `initrd` and `cmdline` in `mem_size` bytes.
    `acpi` is (tables, RSDP address), placed at ACPI_GPA. `cbit`, when not 0, is the C-bit
    position of an encrypted guest: the entry page tables map everything private (with the
    C-bit), as a guest firmware leaves them. `snp` adds the validation stub and the CC blob
    (boot_params.cc_blob_address) of an SEV-SNP guest. BzImageError on anything that does not
    fit, with one line saying what."""
    image = parse_bzimage(kernel)
    h = image.header
    raw_cmdline = cmdline.encode()
    if b"\0" in raw_cmdline:
        raise BzImageError("the kernel command line holds a NUL byte")
    if len(raw_cmdline) > h.cmdline_size:
        raise BzImageError(f"the kernel command line is {len(raw_cmdline)} bytes; this kernel "
                           f"takes at most {h.cmdline_size}")
    if mem_size > _IDENTITY_GIB << 30:
        raise BzImageError(f"at most {_IDENTITY_GIB} GiB of memory for a kernel")
    load = h.pref_address
    if load % h.kernel_alignment or load < 0x100000:
        raise BzImageError(f"bad bzImage: pref_address {load:#x} is not a usable load address")
    initrd = initrd or b""
    initrd_gpa = place_initrd(h, len(initrd), mem_size) if initrd else 0
    if not initrd and load + h.init_size > mem_size:
        place_initrd(h, 0, mem_size)  # the same message for a kernel alone that does not fit
    e820 = [(0, LOW_RAM_END, E820_RAM), (LOW_RAM_END, 0x100000 - LOW_RAM_END, E820_RESERVED),
            (0x100000, mem_size - 0x100000, E820_RAM)]

    bp = bytearray(4096)
    bp[0x1F1:image.setup_header_end] = kernel[0x1F1:image.setup_header_end]
    bp[_TYPE_OF_LOADER] = _LOADER_UNDEFINED
    bp[_LOADFLAGS] |= _CAN_USE_HEAP
    struct.pack_into("<I", bp, _CMD_LINE_PTR, CMDLINE_GPA)
    struct.pack_into("<I", bp, _EXT_CMD_LINE_PTR, 0)
    struct.pack_into("<II", bp, _RAMDISK_IMAGE, initrd_gpa & 0xFFFFFFFF, len(initrd) & 0xFFFFFFFF)
    struct.pack_into("<II", bp, _EXT_RAMDISK_IMAGE, initrd_gpa >> 32, len(initrd) >> 32)
    for i, (addr, size, kind) in enumerate(e820):
        struct.pack_into("<QQI", bp, _E820_TABLE + 20 * i, addr, size, kind)
    bp[_E820_ENTRIES] = len(e820)

    writes = [(GDT_GPA, b"".join(struct.pack("<Q", d) for d in _GDT)), *_page_tables(1 << cbit if cbit else 0),
              (CMDLINE_GPA, raw_cmdline + b"\0"), (load, image.kernel)]
    if acpi is not None:
        tables, rsdp = acpi
        if ACPI_GPA + len(tables) > 0x100000:
            raise BzImageError("the ACPI tables do not fit below 1 MiB")
        struct.pack_into("<Q", bp, _ACPI_RSDP_ADDR, rsdp)
        writes.append((ACPI_GPA, tables))
    if snp:
        struct.pack_into("<I", bp, _CC_BLOB_ADDRESS, CC_BLOB_GPA)
        struct.pack_into("<Q", bp, _SETUP_DATA, CC_BLOB_GPA + _CC_SETUP_DATA_OFFSET)
        writes += [(SNP_STUB_GPA, snp_stub(mem_size, load + 0x200)), (CC_BLOB_GPA, cc_blob())]
    writes.append((BOOT_PARAMS_GPA, bytes(bp)))
    if initrd:
        writes.append((initrd_gpa, initrd))
    return LinuxBoot(image=image, writes=writes, entry=load + 0x200, boot_params=BOOT_PARAMS_GPA,
                     initrd_gpa=initrd_gpa, cmdline=cmdline, e820=e820,
                     kernel_end=load + h.init_size, cbit=cbit, snp=snp)


def kernel_cmdline(append: str) -> str:
    """The whole command line: PLATFORM_CMDLINE, then the user's, so the user's options win
    where the kernel lets the last one win."""
    return f"{PLATFORM_CMDLINE} {append}".strip()


def kernel_plan(kernel: bytes, initrd: bytes | None, append: str, mem_size: int,
                encrypted: bool, snp: bool = False) -> LinuxBoot:
    """The plan `hv run --kernel` loads: `append` after PLATFORM_CMDLINE, the ACPI tables of the
    PC platform's PM layout at ACPI_GPA, and for an `encrypted` guest entry page tables with the
    C-bit at KERNEL_CBITPOS, and for `snp` the SEV-SNP additions. BzImageError as linux_boot."""
    return linux_boot(kernel, initrd, kernel_cmdline(append), mem_size,
                      build_acpi(ACPI_GPA, PmLayout()), cbit=KERNEL_CBITPOS if encrypted or snp else 0,
                      snp=snp)


def kernel_launch_regions(plan: LinuxBoot) -> list[tuple[int, bytes]]:
    """What an SEV launch writes, encrypts and measures for `plan`, in LAUNCH_UPDATE_DATA order:
    each write zero-padded to a multiple of 16 bytes, the command's granularity (the VMM writes
    these padded bytes, so the padding is zeros whatever memory held). Padded writes must not
    overlap, or a later update would measure bytes an earlier one already encrypted: ValueError
    if they do."""
    regions = [(gpa, data + bytes(-len(data) % _LAUNCH_ALIGN)) for gpa, data in plan.writes]
    end = -1
    for gpa, data in sorted(regions):
        if gpa % _LAUNCH_ALIGN or gpa < end:
            raise ValueError(f"launch region at {gpa:#x} is unaligned or overlaps the one before")
        end = gpa + len(data)
    return regions
