"""The initial VMSA of a Linux kernel under SEV-ES: the 64-bit boot protocol's entry state at
the save area's offsets, and the SEV-ES launch digest that covers it after the memory. The
expected page is built here from AMD's save-area layout (Linux's `struct sev_es_save_area`) and
the loader's register values, not from sevwire's offsets or the code under test."""

from __future__ import annotations

import hashlib
import struct

from hv.boot import kernel_launch_digest, kernel_launch_regions, kernel_launch_vmsa, kernel_plan
from tests.boot.test_bzimage import MiB, synthetic

KERNEL = bytes(synthetic(kernel_bytes=0x1230))
INITRD = bytes(range(251)) * 41
APPEND = "rdinit=/init quiet"
MEM = 64 * MiB
C = 1 << 39

# struct sev_es_save_area (arch/x86/include/asm/svm.h): segments are 16 bytes each,
# (selector u16, attrib u16, limit u32, base u64).
SEG = {"es": 0x00, "cs": 0x10, "ss": 0x20, "ds": 0x30, "fs": 0x40, "gs": 0x50,
       "gdtr": 0x60, "ldtr": 0x70, "idtr": 0x80, "tr": 0x90}
CPL = 0xCB
Q = {"efer": 0xD0, "cr4": 0x148, "cr3": 0x150, "cr0": 0x158, "dr7": 0x160, "dr6": 0x168,
     "rflags": 0x170, "rip": 0x178, "rsp": 0x1D8, "rax": 0x1F8, "g_pat": 0x268, "rcx": 0x308,
     "rdx": 0x310, "rbx": 0x318, "rbp": 0x328, "rsi": 0x330, "rdi": 0x338, "r8": 0x340,
     "r9": 0x348, "r10": 0x350, "r11": 0x358, "r12": 0x360, "r13": 0x368, "r14": 0x370,
     "r15": 0x378, "sev_features": 0x3B0, "xcr0": 0x3E8}

LOAD = 0x1000000  # the synthetic kernel's pref_address
# What hv's loader sets (OsCpu.enter_long_mode, then RSI and RIP), plus EFER.SVME (bit 12),
# which every guest state KVM runs holds.
ENTRY = {"cr0": 0x80000011, "cr4": 0x20, "efer": 0x500 | 0x1000, "cr3": 0x2000 | C,
         "rip": LOAD + 0x200, "rsi": 0x9000, "rflags": 2, "rsp": 0,
         "dr6": 0xFFFF0FF0, "dr7": 0x400, "g_pat": 0x0007040600070406, "xcr0": 1, "sev_features": 0}
FLAT_CODE64 = (0x10, 0xA9B, 0xFFFFFFFF, 0)  # P, S, code RX accessed, L, G
FLAT_DATA = (0x18, 0xC93, 0xFFFFFFFF, 0)    # P, S, data RW accessed, D/B, G
SEGMENTS = {"cs": FLAT_CODE64, "ss": FLAT_DATA, "ds": FLAT_DATA, "es": FLAT_DATA,
            "fs": (0, 0, 0, 0), "gs": (0, 0, 0, 0), "gdtr": (0, 0, 31, 0x1000),
            "ldtr": (0, 0x82, 0xFFFF, 0), "idtr": (0, 0, 0, 0), "tr": (0, 0x8B, 0xFFFF, 0)}


def _plan(encrypted: bool = True, append: str = APPEND):
    return kernel_plan(KERNEL, INITRD, append, MEM, encrypted=encrypted)


def _expected_page() -> bytes:
    page = bytearray(4096)
    for name, seg in SEGMENTS.items():
        struct.pack_into("<HHIQ", page, SEG[name], *seg)
    for name, value in ENTRY.items():
        struct.pack_into("<Q", page, Q[name], value)
    return bytes(page)


def test_the_vmsa_holds_the_64_bit_boot_protocol_entry_state_and_nothing_else():
    """Scenario: the page equals one built from the save-area layout and the loader's values;
    every GPR but RSI is 0, CPL is 0, and no byte outside those fields is set."""
    vmsa = kernel_launch_vmsa(_plan())
    assert len(vmsa) == 4096
    assert vmsa == _expected_page()
    assert vmsa[CPL] == 0
    gprs = ("rax", "rbx", "rcx", "rdx", "rdi", "rbp", "rsp", *(f"r{i}" for i in range(8, 16)))
    assert all(struct.unpack_from("<Q", vmsa, Q[r])[0] == 0 for r in gprs)


def test_the_segments_hidden_parts_are_those_of_the_plans_gdt_entries():
    """Scenario: the GDT the launch measures holds __BOOT_CS and __BOOT_DS; the VMSA's CS and
    DS carry what loading those selectors gives (AMD's attrib: descriptor bits 40-47, 52-55)."""
    plan = _plan()
    base, limit = plan.gdtr
    gdt = dict(kernel_launch_regions(plan))[base][:limit + 1]
    vmsa = kernel_launch_vmsa(plan)
    for name, selector in (("cs", 0x10), ("ds", 0x18), ("ss", 0x18), ("es", 0x18)):
        d = struct.unpack_from("<Q", gdt, selector)[0]
        attrib = (d >> 40) & 0xFF | ((d >> 52) & 0xF) << 8
        lim = (d & 0xFFFF) | ((d >> 48) & 0xF) << 16
        lim = lim << 12 | 0xFFF if d & (1 << 55) else lim
        assert struct.unpack_from("<HHI", vmsa, SEG[name]) == (selector, attrib, lim)


def test_the_c_bit_is_in_cr3_of_an_encrypted_plan_only():
    cr3 = struct.unpack_from("<Q", kernel_launch_vmsa(_plan()), Q["cr3"])[0]
    plain = struct.unpack_from("<Q", kernel_launch_vmsa(_plan(encrypted=False)), Q["cr3"])[0]
    assert (cr3, plain) == (0x2000 | C, 0x2000)


def test_the_es_digest_is_sha256_over_the_regions_then_the_vmsa():
    """Scenario: LAUNCH_UPDATE_VMSA extends the digest after the last LAUNCH_UPDATE_DATA, so the
    SEV-ES digest is SHA-256 over the regions and then the VMSA page; it differs from the SEV one."""
    plan = _plan()
    h = hashlib.sha256()
    for _gpa, data in kernel_launch_regions(plan):
        h.update(data)
    sev = h.copy().digest()
    h.update(_expected_page())
    assert kernel_launch_digest(plan, es=True) == h.digest()
    assert kernel_launch_digest(plan) == kernel_launch_digest(plan, es=False) == sev
    assert h.digest() != sev
    assert kernel_launch_digest(_plan(append="init=/bin/sh"), es=True) != h.digest()
