"""Linux bzImage files: the setup header a 64-bit boot loader reads, checked before loading.

Offsets and rules follow the Linux x86 boot protocol (Documentation/x86/boot.rst). A bzImage is
the real-mode setup code ((setup_sects or 4) + 1 sectors of 512 bytes, the setup header at 0x1f1
inside its first sector) followed by the protected-mode code, whose 64-bit entry is 0x200 bytes
past the address it is loaded at. The kernel's own decompressor then needs `init_size` bytes from
that address. A loader that takes the 64-bit entry needs boot protocol 2.12 or later (xloadflags
is where the kernel says the entry exists).

Every malformed file becomes one `BzImageError` with a one-line message: the file comes from the
user, and a loader that trusted a short or foreign file would copy past its end or jump into data.
Nothing here touches a machine; it is a pure function of the bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "BOOT_FLAG",
    "ENTRY_64_OFFSET",
    "HDRS_MAGIC",
    "MIN_PROTOCOL",
    "SETUP_HEADER_END",
    "BzImage",
    "BzImageError",
    "SetupHeader",
    "parse_bzimage",
    "place_initrd",
]

SECTOR = 512
BOOT_FLAG = 0xAA55  # at 0x1fe, as in any PC boot sector
HDRS_MAGIC = b"HdrS"  # at 0x202
MIN_PROTOCOL = 0x020C  # 2.12: xloadflags, hence a declared 64-bit entry
ENTRY_64_OFFSET = 0x200  # startup_64, from the protected-mode code's load address
SETUP_HEADER_END = 0x268  # the end of handover_offset, the last field read here (protocol 2.12)
DEFAULT_SETUP_SECTS = 4  # setup_sects == 0 means 4 (protocol: "for backwards compatibility")

LOADED_HIGH = 1 << 0  # loadflags: protected-mode code at 0x100000 (a bzImage, not a zImage)
XLF_KERNEL_64 = 1 << 0  # xloadflags: a 64-bit entry at +0x200
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1  # kernel, boot_params, cmdline and initrd may sit above 4G

INITRD_ALIGN = 0x1000


class BzImageError(ValueError):
    """A file that is not a bzImage hv can load, or that does not fit; one line for the user."""


# (name, offset, struct format): the fields a loader uses, each at its boot.rst offset.
_FIELDS = (
    ("setup_sects", 0x1F1, "B"),
    ("syssize", 0x1F4, "I"),  # protected-mode code size in 16-byte units (2.04+)
    ("boot_flag", 0x1FE, "H"),
    ("header", 0x202, "4s"),
    ("version", 0x206, "H"),
    ("kernel_version", 0x20E, "H"),  # pointer to the version string, minus 0x200
    ("loadflags", 0x211, "B"),
    ("code32_start", 0x214, "I"),
    ("initrd_addr_max", 0x22C, "I"),
    ("kernel_alignment", 0x230, "I"),
    ("relocatable_kernel", 0x234, "B"),
    ("min_alignment", 0x235, "B"),  # log2 of the smallest alignment the kernel accepts
    ("xloadflags", 0x236, "H"),
    ("cmdline_size", 0x238, "I"),  # longest command line, without its NUL
    ("payload_offset", 0x248, "I"),  # from the protected-mode code's start
    ("payload_length", 0x24C, "I"),
    ("pref_address", 0x258, "Q"),
    ("init_size", 0x260, "I"),
    ("handover_offset", 0x264, "I"),
)


@dataclass(frozen=True)
class SetupHeader:
    """The setup header's fields that a 64-bit loader needs, as the file states them."""

    setup_sects: int
    syssize: int
    boot_flag: int
    header: bytes
    version: int
    kernel_version: int
    loadflags: int
    code32_start: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable_kernel: int
    min_alignment: int
    xloadflags: int
    cmdline_size: int
    payload_offset: int
    payload_length: int
    pref_address: int
    init_size: int
    handover_offset: int

    @property
    def version_str(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"

    @property
    def has_64bit_entry(self) -> bool:
        return bool(self.xloadflags & XLF_KERNEL_64)

    @property
    def can_load_above_4g(self) -> bool:
        return bool(self.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G)

    @property
    def relocatable(self) -> bool:
        return self.relocatable_kernel != 0


@dataclass(frozen=True)
class BzImage:
    """A validated bzImage: its header, where the protected-mode code is, and the raw bytes.

    `setup_bytes` is what a loader copies into boot_params at 0x1f1 (the setup header; its end
    is 0x202 plus the byte at 0x201, the jump that skips over it), `kernel` the protected-mode
    code that goes to the load address.
    """

    header: SetupHeader
    setup_size: int  # file offset of the protected-mode code
    kernel_size: int
    setup_header_end: int
    data: bytes
    release: str  # the version string the header points to ("6.1.0-57-amd64 (...) #1 SMP ..."), or ""

    @property
    def kernel_offset(self) -> int:
        return self.setup_size

    @property
    def kernel(self) -> bytes:
        return self.data[self.setup_size:self.setup_size + self.kernel_size]

    @property
    def setup_bytes(self) -> bytes:
        return self.data[0x1F1:self.setup_header_end]


def _read_header(data: bytes) -> SetupHeader:
    return SetupHeader(**{name: struct.unpack_from("<" + fmt, data, off)[0] for name, off, fmt in _FIELDS})


def _release_string(data: bytes, header: SetupHeader, setup_size: int) -> str:
    """The NUL-terminated version string; it lives in the setup code, 0x200 past the pointer."""
    if header.kernel_version == 0:
        return ""
    start = header.kernel_version + 0x200
    if start >= setup_size:
        return ""
    end = data.find(b"\0", start, setup_size)
    raw = data[start:end if end >= 0 else setup_size]
    return raw.decode("ascii", "replace")


def parse_bzimage(data: bytes) -> BzImage:
    """Validate `data` as a bzImage with a 64-bit entry; raise `BzImageError` otherwise."""
    data = bytes(data)
    if len(data) < SECTOR:
        raise BzImageError(f"not a bzImage: {len(data)} bytes is shorter than a boot sector")
    if struct.unpack_from("<H", data, 0x1FE)[0] != BOOT_FLAG:
        raise BzImageError("not a bzImage: no boot flag 0xAA55 at 0x1fe")
    if len(data) < 0x206:
        raise BzImageError(f"truncated bzImage: {len(data)} bytes ends before the \"HdrS\" magic")
    if data[0x202:0x206] != HDRS_MAGIC:
        raise BzImageError("not a bzImage: no \"HdrS\" magic at 0x202 (an old boot sector?)")
    if len(data) < SETUP_HEADER_END:
        raise BzImageError(f"truncated bzImage: {len(data)} bytes ends inside the setup header "
                           f"(which needs {SETUP_HEADER_END:#x})")
    h = _read_header(data)
    if h.version < MIN_PROTOCOL:
        raise BzImageError(f"boot protocol {h.version_str} is too old: the 64-bit entry needs 2.12 "
                           "or later")
    if not h.loadflags & LOADED_HIGH:
        raise BzImageError("not a bzImage: loadflags LOADED_HIGH is clear (a zImage loaded at "
                           "0x10000)")
    if not h.has_64bit_entry:
        raise BzImageError("no 64-bit entry: xloadflags bit 0 (XLF_KERNEL_64) is clear")

    setup_size = ((h.setup_sects or DEFAULT_SETUP_SECTS) + 1) * SECTOR
    kernel_size = h.syssize * 16
    if kernel_size == 0:
        raise BzImageError("not a bzImage: syssize is 0 (no protected-mode code)")
    if len(data) < setup_size + kernel_size:
        raise BzImageError(f"truncated bzImage: {len(data)} bytes, the header says "
                           f"{setup_size} of setup and {kernel_size} of kernel")
    header_end = 0x202 + data[0x201]
    if not SETUP_HEADER_END <= header_end <= min(setup_size, 0x290):
        # boot_params has room for the header up to 0x290 (edd_mbr_sig_buffer follows).
        raise BzImageError(f"not a bzImage: the setup header ends at {header_end:#x}, outside "
                           f"{SETUP_HEADER_END:#x}..0x290")
    if h.kernel_alignment == 0 or h.kernel_alignment & (h.kernel_alignment - 1):
        raise BzImageError(f"bad bzImage: kernel_alignment {h.kernel_alignment:#x} is not a "
                           "power of two")
    if h.init_size < kernel_size:
        raise BzImageError(f"bad bzImage: init_size {h.init_size:#x} is smaller than the "
                           f"protected-mode code ({kernel_size:#x})")
    return BzImage(header=h, setup_size=setup_size, kernel_size=kernel_size,
                   setup_header_end=header_end, data=data,
                   release=_release_string(data, h, setup_size))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def place_initrd(header: SetupHeader, initrd_size: int, mem_size: int) -> int:
    """Where an initrd of `initrd_size` bytes goes in `mem_size` bytes of RAM, or BzImageError.

    The kernel is assumed at `pref_address` (where a relocatable kernel prefers to run, and
    where a non-relocatable one must) and claims `init_size` bytes from there while it
    decompresses itself; the initrd must not overlap that. Like other loaders, the initrd goes as
    high as it can, page-aligned, ending at or below the top of RAM and at or below
    `initrd_addr_max` (the highest address its last byte may have, unless the kernel can take one
    above 4 GiB).
    """
    if initrd_size < 0 or mem_size <= 0:
        raise BzImageError(f"bad sizes: initrd {initrd_size}, memory {mem_size}")
    kernel_end = header.pref_address + header.init_size
    if kernel_end > mem_size:
        raise BzImageError(f"memory of {_mib(mem_size)} is too small for the kernel: it needs "
                           f"init_size {_mib(header.init_size)} from {header.pref_address:#x}, "
                           f"up to {_mib(kernel_end)}")
    top = mem_size
    if not header.can_load_above_4g:
        top = min(top, header.initrd_addr_max + 1)
    start = (top - initrd_size) & ~(INITRD_ALIGN - 1)
    if start < kernel_end:
        where = f"above the kernel's init_size at {header.pref_address:#x}"
        if top < mem_size:
            raise BzImageError(f"initrd of {_mib(initrd_size)} does not fit {where} below "
                               f"initrd_addr_max {header.initrd_addr_max:#x}")
        needed = -(-kernel_end // INITRD_ALIGN) * INITRD_ALIGN + initrd_size
        raise BzImageError(f"initrd of {_mib(initrd_size)} does not fit {where} in "
                           f"{_mib(mem_size)} of memory: needs at least {needed:#x} bytes "
                           f"({_mib(needed)})")
    return start
