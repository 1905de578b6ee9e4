"""The SEV-ES save area in hardware: the vCPU's registers go to the VMSA page at every #VMEXIT and
come back from it at every VMRUN, encrypted with the guest's key, checked for integrity.

On an SEV-ES part the hypervisor gives the CPU a host page for the guest's save area (VMCB
`vmsa_pa`); the CPU writes the guest's registers there, encrypted, when the guest exits, and
reads them back when it enters, so the hypervisor only ever holds ciphertext. The PSP measured and
encrypted the first VMSA (LAUNCH_UPDATE_VMSA) and left, inside it, the address of a slot in its
trusted memory region (TMR) holding an integrity value of the page's plaintext. This unit renews
that value at every save and checks it at every load: a hypervisor that changes (or replays) the
VMSA ciphertext gets a failed VMRUN instead of a guest running its register values. The TMR is
fenced off from host and device accesses (MemoryController.fence), so the value is out of reach.

Cost. Registers are read with one context snapshot (a single Unicorn call) plus four reads, the
page is packed with vectorised stores into a numpy page, encrypted with one engine call and
hashed once: tens of microseconds per exit, and nothing on the path of ordinary instructions.
At entry the CPU compares the page's ciphertext with what it last wrote (4 KiB, one numpy call):
when they are equal, decrypting would give back exactly the registers the core still holds, so
the decrypt and the register writes are skipped. Any other content is decrypted, checked and
loaded.
"""

from __future__ import annotations

import ctypes

import numpy as np
from sevwire import EFER_SVME, VMSA_QWORDS, VMSA_SEGMENTS, VMSA_SIZE, VMSA_TMR_SLOT, vmsa_integrity
from unicorn import x86_const as X

from hv.hw.memctl import PAGE, MemoryController
from hv.hw.ucraw import UcIntel, context_address, new_x86_64

__all__ = ["VmsaUnit", "vmsa_integrity"]

EFER = 0xC0000080
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF

# Free-form 64-bit registers taken from one context snapshot: name -> Unicorn register.
_SNAP = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
    "r13", "r14", "r15", "rip", "cr2", "cr3")}
_SNAP["fs_base"] = X.UC_X86_REG_FS_BASE
_SNAP["gs_base"] = X.UC_X86_REG_GS_BASE
# Where each lands in the VMSA (FS/GS base are the segments' base fields).
_VMSA_OFF = {n: VMSA_QWORDS[n] for n in _SNAP if n in VMSA_QWORDS}
_VMSA_OFF["fs_base"] = VMSA_SEGMENTS["fs"] + 8
_VMSA_OFF["gs_base"] = VMSA_SEGMENTS["gs"] + 8
_GDTR, _IDTR = VMSA_SEGMENTS["gdtr"], VMSA_SEGMENTS["idtr"]
_TAG_OK = 1


def _calibrate() -> dict[str, int] | None:
    """Byte offsets of the _SNAP registers inside a Unicorn context snapshot, found by writing
    distinct values into a scratch core; None (use plain register reads) if any is ambiguous."""
    uc = new_x86_64()
    values = {}
    for i, (name, reg) in enumerate(_SNAP.items()):
        values[name] = 0x5A17_0000_0000_0000 | (i + 1) << 36 | 0x0ABC000
        uc.reg_write(reg, values[name])
    ctx = uc.context_save()
    snap = np.frombuffer(ctypes.string_at(context_address(ctx), ctx.size // 8 * 8), dtype="<u8")
    out = {}
    for name, v in values.items():
        hits = np.flatnonzero(snap == np.uint64(v))
        if hits.size != 1:
            return None
        out[name] = int(hits[0]) * 8
    return out


_OFFSETS = _calibrate()


class VmsaUnit:
    """Save/load of one SEV-ES vCPU's registers to/from its VMSA page (one per Cpu)."""

    def __init__(self, uc: UcIntel, mc: MemoryController, asid: int):
        self._uc = uc
        self._mc = mc
        self._asid = asid
        self._plain = np.zeros(VMSA_SIZE, dtype=np.uint8)  # the core's copy of the last load/save
        self._q = self._plain.view("<u8")
        self._cipher = np.zeros(VMSA_SIZE, dtype=np.uint8)  # what the core last wrote to DRAM
        self._spa: int | None = None  # page the core's registers currently correspond to
        names = list(_SNAP)
        self._names = names
        self._dst = np.array([_VMSA_OFF[n] // 8 for n in names], dtype=np.intp)
        if _OFFSETS is not None:
            self._src = np.array([_OFFSETS[n] // 8 for n in names], dtype=np.intp)
        self.stats = {"saves": 0, "loads": 0, "fast_entries": 0}

    # -- VMRUN ----------------------------------------------------------------------------------
    def load(self, spa: int | None) -> str | None:
        """Make the core's registers those of the VMSA at `spa`; a reason string if VMRUN fails."""
        if spa is None or spa % PAGE or not 0 <= spa <= self._mc.size - PAGE:
            return f"VMSA address {spa!r} is not a page in DRAM"
        stored = self._mc.dram[spa:spa + VMSA_SIZE]
        if self._spa == spa and np.array_equal(stored, self._cipher) and not self._cached(spa):
            self.stats["fast_entries"] += 1
            return None
        plain = self._mc.read(spa, VMSA_SIZE, self._asid)  # coherent with every cache
        page = np.frombuffer(plain, dtype=np.uint8)
        reason = self._check(spa, page)
        if reason is None and not int(page.view("<u8")[VMSA_QWORDS["efer"] // 8]) & EFER_SVME:
            # APM VMRUN consistency checks: EFER.SVME zero in the guest state -> VMEXIT_INVALID.
            reason = "VMRUN refused the VMSA: its EFER lacks SVME"
        if reason is not None:
            self._spa = None
            return reason
        self._plain[:] = page
        self._cipher[:] = self._mc.dram[spa:spa + VMSA_SIZE]
        self._spa = spa
        self._write_regs()
        self.stats["loads"] += 1
        return None

    def _cached(self, spa: int) -> bool:
        # A cached plaintext copy of the page (someone mapped it into a guest) may be newer.
        page = spa // PAGE
        return any(v.state[page] for v in self._mc.views.values())

    def _check(self, spa: int, page: np.ndarray) -> str | None:
        q = page.view("<u8")
        slot = int(q[VMSA_TMR_SLOT // 8])
        tmr = self._mc.psp_only
        if slot % 16 or not any(lo <= slot and slot + 16 <= lo + n for lo, n in tmr):
            return "VMSA integrity check failed: its TMR slot pointer is invalid"
        entry = self._read_tmr(slot)
        if int.from_bytes(entry[:8], "little") != spa | _TAG_OK or entry[8:] != vmsa_integrity(page):
            return "VMSA integrity check failed: the saved guest state was modified"
        return None

    def _write_regs(self) -> None:
        q = self._q
        uc = self._uc
        uc.reg_write_batch([
            (_SNAP[n], int(q[_VMSA_OFF[n] // 8])) for n in self._names if n not in ("cr3",)])
        uc.reg_write(X.UC_X86_REG_RFLAGS, int(q[VMSA_QWORDS["rflags"] // 8]))
        uc.reg_write(X.UC_X86_REG_CR4, int(q[VMSA_QWORDS["cr4"] // 8]))
        uc.msr_write(EFER, int(q[VMSA_QWORDS["efer"] // 8]))
        uc.reg_write(X.UC_X86_REG_CR0, int(q[VMSA_QWORDS["cr0"] // 8]))
        uc.reg_write(X.UC_X86_REG_CR3, int(q[VMSA_QWORDS["cr3"] // 8]))
        for reg, off in ((X.UC_X86_REG_GDTR, _GDTR), (X.UC_X86_REG_IDTR, _IDTR)):
            limit = int(self._plain[off + 4:off + 8].view("<u4")[0])
            uc.reg_write(reg, (0, int(q[off // 8 + 1]), limit, 0))

    # -- #VMEXIT --------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the core's registers into the VMSA (encrypted) and renew its integrity value."""
        spa = self._spa
        if spa is None:
            return
        uc = self._uc
        q = self._q
        if _OFFSETS is not None:
            ctx = uc.context_save()
            snap = np.frombuffer(ctypes.string_at(context_address(ctx), ctx.size // 8 * 8), dtype="<u8")
            q[self._dst] = snap[self._src]
        else:
            q[self._dst] = uc.reg_read_batch([_SNAP[n] for n in self._names])
        q[VMSA_QWORDS["rflags"] // 8] = uc.reg_read(X.UC_X86_REG_RFLAGS)
        q[VMSA_QWORDS["cr0"] // 8] = uc.reg_read(X.UC_X86_REG_CR0)
        q[VMSA_QWORDS["cr4"] // 8] = uc.reg_read(X.UC_X86_REG_CR4)
        # The core (Unicorn) has no SVM and drops SVME from its EFER; the save area keeps it.
        q[VMSA_QWORDS["efer"] // 8] = uc.msr_read(EFER) | EFER_SVME
        for reg, off in ((X.UC_X86_REG_GDTR, _GDTR), (X.UC_X86_REG_IDTR, _IDTR)):
            _sel, base, limit, _flags = uc.reg_read(reg)
            q[off // 8 + 1] = base
            self._plain[off + 4:off + 8].view("<u4")[0] = limit
        slot = int(q[VMSA_TMR_SLOT // 8])
        self._store(slot, (spa | _TAG_OK).to_bytes(8, "little") + vmsa_integrity(self._plain), None)
        self._store(spa, self._plain, self._asid)
        self._cipher[:] = self._mc.dram[spa:spa + VMSA_SIZE]
        self.stats["saves"] += 1

    def _read_tmr(self, slot: int) -> bytes:
        return self._mc.read(slot, 16, self._mc.host_slot(False))

    def _store(self, spa: int, data, slot: int | None) -> None:
        """A store by the CPU itself: write DRAM (through `slot`'s key, or the host's under TSME)
        without the code-cache flush a host write costs, since neither page is ever code."""
        mc = self._mc
        page = spa // PAGE
        if mc.invalidate(page, page + 1):
            mc.bump()
        if slot is None:
            slot = mc.host_slot(False)
        src = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
        dst = mc.dram[spa:spa + src.size]
        if slot is None:
            dst[:] = src
        else:
            mc.engine.encrypt_into(slot, spa, src, dst)

    @property
    def spa(self) -> int | None:
        return self._spa
