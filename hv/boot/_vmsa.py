"""The initial VMSA (SEV-ES save area) hv launches a guest with.

An SEV-ES guest's register state lives in a 4 KiB VMSA page encrypted with the guest's key; the
PSP measures each initial VMSA page after the image (LAUNCH_UPDATE_VMSA), so the guest owner must
be able to predict it byte for byte. `initial_vmsa` is therefore a pure function of the image,
like the rest of hv.boot: the VMM hands its result to the launch, the owner tools hash it.
`kernel_launch_vmsa` is the same for a Linux kernel's boot plan: the 64-bit boot protocol's entry
state, which differs from hv's own ABI (the kernel's GDT and selectors, no NX, RSP 0).

The save area's layout is the hardware's (sevwire's VMSA_* offsets, which the hardware model
hv.hw.vmsa saves and loads registers at); this module only fills it with the ABI's entry state.
"""

from __future__ import annotations

import struct

from sevwire import EFER_SVME, VMSA_CPL, VMSA_QWORDS, VMSA_SEGMENTS, VMSA_SIZE

from hv.boot._image import parse_image
from hv.boot._layout import BOOT_INFO_GPA, BOOT_STACK_TOP, PAGE_TABLES_GPA
from hv.boot.linux import BOOT_CS, BOOT_DS, LinuxBoot

SEV_FEATURES_SNP = 1  # VMSA SEV_FEATURES bit 0: SNPActive

__all__ = [
    "initial_vmsa",
    "kernel_launch_vmsa",
    "launch_vmsas",
    "ENTRY_CR0",
    "ENTRY_CR4",
    "ENTRY_EFER",
    "ENTRY_RFLAGS",
]

# The entry state of docs/guest-abi.md (the plain and SEV launches set the same values).
ENTRY_CR0 = 0x80010033      # PG, WP, NE, ET, MP, PE
ENTRY_CR4 = 0x000006A0      # PAE, PGE, OSFXSR, OSXMMEXCPT
ENTRY_EFER = 0xD00          # LME, LMA, NXE
ENTRY_RFLAGS = 0x2
_DR6, _DR7 = 0xFFFF0FF0, 0x400
_G_PAT = 0x0007040600070406
_XCR0 = 0x1

# 64-bit code and flat data segments (attrib: type[3:0] S[4] DPL[6:5] P[7] L[9] G[11]). The
# selectors are 0: the guest has no GDT of its own until it loads one.
_CODE64 = (0, 0x0A9B, 0xFFFFFFFF, 0)
_DATA = (0, 0x0C93, 0xFFFFFFFF, 0)
_LDTR = (0, 0x0082, 0xFFFF, 0)
_TR = (0, 0x008B, 0xFFFF, 0)
_NO_TABLE = (0, 0, 0, 0)  # GDTR/IDTR limit 0: no IDT, as the ABI promises
_NULL = (0, 0, 0, 0)  # a null selector: not present, nothing hidden

# A Linux kernel's entry state (hv.hw.oscpu.OsCpu.enter_long_mode): the 64-bit boot protocol
# asks for no more than paging, PAE and long mode.
_KERNEL_CR0 = 0x80000011   # PG, ET, PE
_KERNEL_CR4 = 0x20         # PAE
_KERNEL_EFER = 0x500       # LME, LMA


def initial_vmsa(image: bytes, mem_size: int, sev_features: int = 0, *, rip: int | None = None,
                 regs: dict[str, int] | None = None) -> bytes:
    """The 4 KiB VMSA of the boot vCPU of `image`, before the PSP encrypts and measures it.

    Registers are the ABI's entry state: RIP = the image's entry point, RSP = the boot stack
    top, RSI = the boot information page, CR3 = the boot page tables, every other GPR 0.
    `sev_features` is the VMSA's SEV_FEATURES field (0 for SEV-ES without extra features).
    `rip` and `regs` override values (tests and tiny hand-made guests only).
    """
    entry = parse_image(image, mem_size).entry if rip is None else rip
    q = {
        "efer": ENTRY_EFER | EFER_SVME, "cr4": ENTRY_CR4, "cr3": PAGE_TABLES_GPA, "cr0": ENTRY_CR0,
        "dr7": _DR7, "dr6": _DR6, "rflags": ENTRY_RFLAGS, "rip": entry, "rsp": BOOT_STACK_TOP,
        "rsi": BOOT_INFO_GPA, "g_pat": _G_PAT, "sev_features": sev_features, "xcr0": _XCR0,
    }
    q.update(regs or {})
    segs = {"es": _DATA, "cs": _CODE64, "ss": _DATA, "ds": _DATA, "fs": _DATA, "gs": _DATA,
            "gdtr": _NO_TABLE, "ldtr": _LDTR, "idtr": _NO_TABLE, "tr": _TR}
    return _vmsa_page(segs, q)


def kernel_launch_vmsa(plan: LinuxBoot) -> bytes:
    """The 4 KiB VMSA of a Linux kernel's boot vCPU under SEV-ES, before the PSP encrypts and
    measures it: the state hv's 64-bit boot loader leaves (hv.hw.oscpu.OsCpu.enter_long_mode,
    then RSI and RIP). Paging and long mode on (CR0 PG/ET/PE, CR4 PAE, EFER LME/LMA plus SVME,
    which every VMSA holds), CR3 = the plan's PML4 with its C-bit, the plan's GDT, CS = BOOT_CS
    and SS/DS/ES = BOOT_DS with the hidden parts of those GDT entries (flat 64-bit code, flat
    data), FS/GS null, no IDT, interrupts off (RFLAGS 2), RIP = the 64-bit entry point, RSI =
    boot_params, every other GPR 0 (RSP too: the kernel sets its own stack first thing).
    SEV_FEATURES is 0 (SEV-ES, no SNP features). MTRRdefType is an MSR the VMSA does not hold.
    An SEV-SNP plan (plan.snp) starts at its validation stub (plan.start) with SEV_FEATURES =
    SNPActive."""
    gdt_base, gdt_limit = plan.gdtr
    # The kernel's GDT entries (hv.boot.linux) are the same flat segments as hv's own, so their
    # hidden parts are _CODE64's and _DATA's; only the selectors differ.
    code = (BOOT_CS, *_CODE64[1:])
    data = (BOOT_DS, *_DATA[1:])
    segs = {"es": data, "cs": code, "ss": data, "ds": data, "fs": _NULL, "gs": _NULL,
            "gdtr": (0, 0, gdt_limit, gdt_base), "ldtr": _LDTR, "idtr": _NO_TABLE, "tr": _TR}
    q = {
        "efer": _KERNEL_EFER | EFER_SVME, "cr4": _KERNEL_CR4, "cr3": plan.cr3, "cr0": _KERNEL_CR0,
        "dr7": _DR7, "dr6": _DR6, "rflags": ENTRY_RFLAGS, "rip": plan.start, "rsp": 0,
        "rsi": plan.boot_params, "g_pat": _G_PAT,
        "sev_features": SEV_FEATURES_SNP if plan.snp else 0, "xcr0": _XCR0,
    }
    return _vmsa_page(segs, q)


def _vmsa_page(segs: dict[str, tuple[int, int, int, int]], q: dict[str, int]) -> bytes:
    """A VMSA page holding `segs` (name -> selector, attrib, limit, base) and the 64-bit fields
    `q` at their hardware offsets, CPL 0, every other byte 0."""
    page = bytearray(VMSA_SIZE)
    for name, off in VMSA_SEGMENTS.items():
        struct.pack_into("<HHIQ", page, off, *segs[name])
    for name, value in q.items():
        if name not in VMSA_QWORDS:
            raise ValueError(f"{name!r} is not a VMSA field")
        struct.pack_into("<Q", page, VMSA_QWORDS[name], value & 0xFFFF_FFFF_FFFF_FFFF)
    page[VMSA_CPL] = 0
    return bytes(page)


def launch_vmsas(image: bytes, mem_size: int, vcpus: int = 1) -> list[bytes]:
    """Every VMSA page LAUNCH_UPDATE_VMSA measures, in issue order (one per vCPU; hv boots one)."""
    if vcpus != 1:
        raise ValueError("hv boots exactly one vCPU")
    return [initial_vmsa(image, mem_size)]
