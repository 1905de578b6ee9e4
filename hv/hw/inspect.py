"""A probe on the emulated machine: guest memory as the hardware holds it (`hv memmap`).

This is a lab instrument, like a JTAG probe on a board: it is wired to the memory controller
itself, so it reads DRAM as stored *and* a guest's plaintext through the guest's key slot, and it
walks the guest's own page tables the way the MMU does (through the guest's key for an encrypted
guest). No hypervisor has this view; that is why it lives in hv.hw and is reached only from the
command line, never from hv.kvm or hv.vmm.

For every guest-physical page it reports:
- how the guest maps it: PRIVATE (some leaf maps it with the C-bit), SHARED (only C=0 leaves),
  BOTH (aliases of each kind), PLAIN (mapped, in a guest without encryption), UNMAPPED;
- the byte entropy of DRAM at that page (what the hypervisor, DMA or a cold-boot attacker sees);
- the byte entropy of what the guest holds there (the plaintext through its key for a private
  page, the bytes as stored for a shared one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sevwire import VMSA_QWORDS

from hv.hw.memctl import HOST_SLOT, PAGE

__all__ = ["BOTH", "KIND_NAMES", "MemoryMap", "MemoryProbe", "PLAIN", "PRIVATE", "SHARED",
           "UNMAPPED", "page_entropy"]

UNMAPPED, PLAIN, PRIVATE, SHARED, BOTH = 0, 1, 2, 3, 4
KIND_NAMES = ("unmapped", "plain", "private", "shared", "both")

_P, _PS = 0x1, 0x80
_PHYS = (1 << 52) - 1


@dataclass(frozen=True)
class MemoryMap:
    """Per guest-physical page (index = GPA >> 12): kind, DRAM entropy, guest-plaintext entropy."""

    kinds: np.ndarray          # uint8, one of UNMAPPED..BOTH
    dram_entropy: np.ndarray   # float32, bits per byte (0..8)
    plain_entropy: np.ndarray  # float32, bits per byte (0..8)
    encrypted: bool

    @property
    def pages(self) -> int:
        return int(self.kinds.size)


def page_entropy(pages: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits per byte of each row of an (n, 4096) uint8 array."""
    n = pages.shape[0]
    out = np.empty(n, dtype=np.float32)
    step = 256  # rows per histogram batch: bounded scratch memory for any guest size
    for s in range(0, n, step):
        block = pages[s:s + step]
        m = block.shape[0]
        idx = block.astype(np.int32) + (np.arange(m, dtype=np.int32) * 256)[:, None]
        counts = np.bincount(idx.ravel(), minlength=m * 256).reshape(m, 256)
        p = counts / float(pages.shape[1])
        logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
        out[s:s + m] = -(p * logs).sum(axis=1)
    return out


class MemoryProbe:
    """Attached to one machine's memory controller."""

    def __init__(self, machine):
        self._mc = machine._mc  # the probe's wire: the controller itself, below every port

    def guest_cr3(self, cr3: int | None, vmsa_spa: int | None, asid: int) -> int:
        """The core's CR3: as given, or read from an SEV-ES guest's save area through its key."""
        if vmsa_spa is None:
            assert cr3 is not None, "a guest without a VMSA has its CR3 in the core"
            return cr3
        page = self._mc.read(vmsa_spa, PAGE, asid)
        off = VMSA_QWORDS["cr3"]
        return int.from_bytes(page[off:off + 8], "little")

    def memory_map(self, *, npt, asid: int, encrypted: bool, cbitpos: int, cr3: int,
                   mem_size: int) -> MemoryMap:
        mc = self._mc
        mc.flush_all()  # DRAM as a probe would find it: every dirty cached page written back
        npages = mem_size // PAGE
        table_slot = asid if encrypted else (HOST_SLOT if mc.tsme else None)
        shared_slot = HOST_SLOT if mc.tsme else None
        cmask = (1 << cbitpos) if encrypted else 0
        with_c, without_c = self._walk(npt, cr3, table_slot, cmask, npages)
        kinds = np.full(npages, UNMAPPED, dtype=np.uint8)
        if encrypted:
            kinds[without_c] = SHARED
            kinds[with_c] = PRIVATE
            kinds[with_c & without_c] = BOTH
        else:
            kinds[with_c | without_c] = PLAIN

        spas = np.array([_spa(npt, p << 12) for p in range(npages)], dtype=np.int64)
        backed = spas >= 0
        # What the guest holds: a private (or unmapped) page through its key, a shared one as
        # stored (through the host key under TSME).
        private = backed & (kinds != SHARED) if encrypted else np.zeros(npages, dtype=bool)
        slots = ((private, asid), (backed & ~private, shared_slot))
        frames = mc.dram.reshape(-1, PAGE)
        dram_h = np.zeros(npages, dtype=np.float32)
        plain_h = np.zeros(npages, dtype=np.float32)
        batch = 1024  # pages at a time: bounded memory for any guest size
        for b0 in range(0, npages, batch):
            b1 = min(npages, b0 + batch)
            dram = np.zeros((b1 - b0, PAGE), dtype=np.uint8)
            ok = backed[b0:b1]
            dram[ok] = frames[spas[b0:b1][ok] >> 12]
            plain = dram.copy()
            for rows, slot in slots:
                if slot is None:
                    continue
                for p0, p1 in _runs(rows[b0:b1], spas[b0:b1]):
                    data = mc.read(int(spas[b0 + p0]), (p1 - p0) * PAGE, slot)
                    plain[p0:p1] = np.frombuffer(data, dtype=np.uint8).reshape(-1, PAGE)
            dram_h[b0:b1] = page_entropy(dram)
            plain_h[b0:b1] = page_entropy(plain)
        return MemoryMap(kinds, dram_h, plain_h, encrypted)

    def _walk(self, npt, cr3: int, slot: int | None, cmask: int, npages: int):
        """Every leaf of the 4-level tables under `cr3`: (pages mapped with C=1, with C=0)."""
        mc = self._mc
        addr_mask = _PHYS & ~0xFFF & ~cmask
        with_c = np.zeros(npages, dtype=bool)
        without_c = np.zeros(npages, dtype=bool)
        seen: set[tuple[int, int]] = set()
        stack = [(cr3 & addr_mask, 4)]
        while stack:
            table, level = stack.pop()
            if (table, level) in seen:
                continue  # shared or looping tables are walked once per level
            seen.add((table, level))
            spa = _spa(npt, table)
            if spa < 0:
                continue
            entries = np.frombuffer(mc.read(spa, PAGE, slot), dtype="<u8")
            for i in np.flatnonzero(entries & np.uint64(_P)):
                e = int(entries[i])
                if level == 1 or (e & _PS and level in (2, 3)):
                    size = PAGE << (9 * (level - 1))
                    first = (e & addr_mask & ~(size - 1)) >> 12
                    last = min(first + size // PAGE, npages)
                    if first < npages:
                        (with_c if e & cmask else without_c)[first:last] = True
                else:
                    stack.append((e & addr_mask, level - 1))
        return with_c, without_c


def _runs(rows: np.ndarray, spas: np.ndarray):
    """[p0, p1) ranges of selected rows whose host pages are consecutive (one engine call each)."""
    start = None
    for p in range(rows.size + 1):
        inside = p < rows.size and rows[p]
        if start is not None and (not inside or spas[p] != spas[p - 1] + PAGE):
            yield start, p
            start = None
        if inside and start is None:
            start = p


def _spa(npt, gpa: int) -> int:
    hit = npt.lookup(gpa)
    return -1 if hit is None else hit[0]
