"""The memory controller: DRAM, the AES engine, and plaintext views kept coherent with DRAM.

DRAM holds what a physical attacker would read: ciphertext for every page written under a key.
A *view* is the plaintext a key domain sees of DRAM (slot s = ASID s, slot 0 = the host's SME
key). It plays the role of the CPU caches, which on the real part hold plaintext tagged with the
ASID: guest accesses through the C-bit run straight on the view at Unicorn's full speed, and the
controller pays for encryption per page per coherence event, never per instruction.

Per host page and view the state is ABSENT, CLEAN (view == decrypt(DRAM)) or DIRTY (the view is
newer). The invariant the rest of the system relies on:
  * a page is DIRTY in at most one view, and then no other view caches it and no TLB maps it raw;
  * whoever touches a page from another domain first makes DRAM current (write back), and a write
    from another domain drops every cached copy (invalidate).
Alias rules, as on parts with hardware-enforced coherence (CPUID 0x8000001F EAX[10] SME_COHERENT):
a guest's C=0 access to a page it holds dirty under C=1 first writes the plaintext back as
ciphertext, so the C=0 alias reads ciphertext, never plaintext; a C=0 write drops the C=1 copy, so
the guest later reads the decryption of whatever was written (garbage), never the written bytes.

TLB entries that point into a view must not outlive a change of that view, so every coherence
action that downgrades or drops a cached page bumps `epoch`; a vCPU flushes its TLB (and, with
`tb_epoch`, its translated code) before it runs again.

Fenced pages (the SEV-ES TMR, see fence()) belong to the PSP and to the CPU's save-area unit
alone: the host port and DMA are refused, and no view and no raw TLB entry ever holds one. A
guest's access to one is answered by the MMU from `fence_pages` (all ones; stores dropped).
"""

from __future__ import annotations

import numpy as np

from hv.hw.engine import AesEngine
from hv.hw.errors import AddressError, AsidError
from hv.hw.rmp import Rmp, RmpEntry

__all__ = ["MemoryController", "PAGE", "View", "ABSENT", "CLEAN", "DIRTY", "HOST_SLOT"]

PAGE = 0x1000
ABSENT, CLEAN, DIRTY = 0, 1, 2
HOST_SLOT = 0
_FIRMWARE_PAGE = RmpEntry(assigned=True, asid=0, gpa=0, immutable=True)


class View:
    """One key domain's plaintext of DRAM, indexed by host physical address."""

    __slots__ = ("slot", "buf", "state")

    def __init__(self, slot: int, size: int):
        self.slot = slot
        self.buf = np.zeros(size, dtype=np.uint8)  # untouched pages cost no host memory
        self.state = np.zeros(size // PAGE, dtype=np.uint8)


class NeedsRetry(Exception):
    """A coherence conflict was resolved; the faulting access must be retried after a TLB flush."""


class MemoryController:
    def __init__(self, dram_size: int, engine: AesEngine, tsme: bool = False):
        if dram_size <= 0 or dram_size % PAGE:
            raise AddressError(f"DRAM size must be a positive multiple of 4 KiB, not {dram_size:#x}")
        self.size = dram_size
        self.engine = engine
        self.tsme = tsme
        self.dram = np.zeros(dram_size, dtype=np.uint8)
        self.views: dict[int, View] = {}
        self.raw_mapped = np.zeros(dram_size // PAGE, dtype=bool)
        self.code_pages = np.zeros(dram_size // PAGE, dtype=bool)  # ever fetched from: TBs may cache them
        self.epoch = 0
        self.tb_epoch = 0
        self.psp_only: list[tuple[int, int]] = []  # fenced ranges (the SEV-ES TMR): see fence()
        self.fenced = bytearray(dram_size // PAGE)  # per page: 1 if a fenced range touches it
        # What a fenced access from a guest reaches instead (mmu.FENCE_BASE): a page of all ones
        # for loads and fetches, then a page that takes stores and is never read.
        self.fence_pages = np.full(2 * PAGE, 0xFF, dtype=np.uint8)
        self.rmp: Rmp | None = None  # once SNP is enabled (enable_rmp); None costs nothing
        self.stats = {"pages_decrypted": 0, "pages_encrypted": 0, "tlb_flushes": 0}
        self.trace = None  # a trace sink (Cpu.set_trace); None costs one check per page moved
        # The private memory of encrypted operating systems (hv.hw.osmem.PrivateRam): caches no
        # TLB fill tells about, made current whenever another agent reads or writes DRAM.
        self.os_caches: list = []

    # -- checks ----------------------------------------------------------------------------------
    def check_range(self, spa: int, length: int) -> None:
        if not isinstance(spa, int) or not isinstance(length, int) or length < 0:
            raise AddressError(f"bad physical range {spa!r}+{length!r}")
        if spa < 0 or spa + length > self.size:
            raise AddressError(
                f"physical range {spa:#x}..{spa + length:#x} is outside DRAM (0..{self.size:#x})")

    def check_slot(self, slot: int) -> None:
        if not 0 <= slot <= self.engine.max_asid:
            raise AsidError(f"ASID {slot} is outside 0..{self.engine.max_asid}")

    def fence(self, spa: int, length: int) -> None:
        """Reserve [spa, spa+length) for the PSP and the CPU: host and device accesses are refused,
        and a guest that reaches one of its pages through its nested page table reads all ones
        and has its stores dropped (the MMU's side, mmu.py).

        This is the trusted memory region (TMR) an SEV-ES platform is INITed with: the integrity
        values of saved guest register state live there, out of the hypervisor's reach. Cached
        copies of the pages (a guest used the memory before) go back to DRAM and are dropped, and
        every TLB and translated block is flushed, so nothing mapped before the fence outlives it.
        With SNP on, the pages become Firmware pages in the RMP (see enable_rmp)."""
        self.check_range(spa, length)
        if length == 0:
            return
        p0, p1 = spa // PAGE, (spa + length + PAGE - 1) // PAGE
        if (spa, length) not in self.psp_only:
            self.psp_only.append((spa, length))
            self.fenced[p0:p1] = b"\x01" * (p1 - p0)
            self.invalidate(p0, p1)
            self.bump(code=True)
        if self.rmp is not None:  # again at every INIT: the pages may have been reclaimed since
            self._firmware_pages(p0, p1)

    def enable_rmp(self):
        """Turn on SEV-SNP's reverse map table (SNP_INIT): every page starts hypervisor-owned, but
        fenced ones, which are the firmware's (Firmware state: assigned to ASID 0, immutable), as
        on the part: RMPUPDATE cannot hand them out, and an SNP guest reaching one faults."""
        if self.rmp is None:
            self.rmp = Rmp(self.size)
            for spa, length in self.psp_only:
                self._firmware_pages(spa // PAGE, (spa + length + PAGE - 1) // PAGE)
        return self.rmp

    def _firmware_pages(self, p0: int, p1: int) -> None:
        assert self.rmp is not None  # only reached with the RMP enabled
        for p in range(p0, p1):
            self.rmp.firmware_set(p * PAGE, _FIRMWARE_PAGE)
        self.bump()  # the RMP changed: every TLB must check it again

    def check_host_write(self, spa: int, length: int) -> None:
        """check_host, and with SNP on, RmpViolation for a write to an assigned page."""
        self.check_host(spa, length)
        if self.rmp is not None:
            self.check_range(spa, length)
            self.rmp.check_host_write(spa, length)

    def check_host(self, spa: int, length: int) -> None:
        """AddressError if a host or device access to [spa, spa+length) touches a fenced range."""
        for lo, n in self.psp_only:
            if spa < lo + n and lo < spa + length:
                raise AddressError(f"physical range {spa:#x}..{spa + length:#x} is in the PSP's "
                                   f"trusted memory region")

    def view(self, slot: int) -> View:
        self.check_slot(slot)
        v = self.views.get(slot)
        if v is None:
            v = self.views[slot] = View(slot, self.size)
        return v

    # -- coherence primitives ----------------------------------------------------------------------
    def bump(self, code: bool = False) -> None:
        """Every TLB must be flushed before its vCPU runs again (and translated code, if `code`)."""
        self.epoch += 1
        self.stats["tlb_flushes"] += 1
        self.raw_mapped[:] = False
        if code:
            self.tb_epoch += 1

    def _writeback_page(self, v: View, page: int) -> None:
        a = page * PAGE
        self.engine.encrypt_into(v.slot, a, v.buf[a:a + PAGE], self.dram[a:a + PAGE])
        v.state[page] = CLEAN
        self.stats["pages_encrypted"] += 1
        if self.trace is not None:
            self.trace("encrypt", slot=v.slot, spa=a)

    def _load_page(self, v: View, page: int) -> None:
        a = page * PAGE
        self.engine.decrypt_into(v.slot, a, self.dram[a:a + PAGE], v.buf[a:a + PAGE])
        v.state[page] = CLEAN
        self.stats["pages_decrypted"] += 1
        if self.trace is not None:
            self.trace("decrypt", slot=v.slot, spa=a)

    def writeback(self, p0: int, p1: int, keep: int | None = None) -> bool:
        """Make DRAM current for pages [p0, p1); return True if any view was downgraded."""
        for cache in self.os_caches:
            cache.writeback(p0, p1)
        changed = False
        for v in self.views.values():
            if v.slot == keep:
                continue
            dirty = np.flatnonzero(v.state[p0:p1] == DIRTY)
            for i in dirty:
                self._writeback_page(v, p0 + int(i))
            changed |= dirty.size > 0
        return changed

    def writeback_view(self, v: View) -> None:
        for i in np.flatnonzero(v.state == DIRTY):
            self._writeback_page(v, int(i))

    def invalidate(self, p0: int, p1: int, keep: int | None = None) -> bool:
        """Write back, then drop every cached copy of pages [p0, p1); True if any view held one."""
        for cache in self.os_caches:
            cache.invalidate(p0, p1)
        self.writeback(p0, p1, keep)
        dropped = False
        for v in self.views.values():
            if v.slot == keep:
                continue
            if v.state[p0:p1].any():
                v.state[p0:p1] = ABSENT
                dropped = True
        return dropped

    # -- fills from the MMU (inside Unicorn's TLB fill hook) -------------------------------------------
    def fill_view(self, slot: int, page: int, write: bool) -> None:
        """Bring `page` into `slot`'s view for a read (CLEAN) or a write (DIRTY).

        Raises NeedsRetry when another domain had to be written back or dropped first: the
        caller's TLB may still hold entries that bypass the controller, so it must flush and retry.
        A fenced page is never brought into a view (AddressError: the MMU answers those itself).
        """
        if self.fenced[page]:
            raise AddressError(f"page {page * PAGE:#x} is fenced: it never enters a view")
        if self._yield_page(page, write, slot) or self.raw_mapped[page]:
            self.bump(code=write)
            raise NeedsRetry
        v = self.views[slot]
        if v.state[page] == ABSENT:
            self._load_page(v, page)
        if write:
            v.state[page] = DIRTY

    def fill_raw(self, page: int, write: bool) -> None:
        """A TLB entry will map `page` straight onto DRAM (a C=0 access without TSME)."""
        if self.fenced[page]:
            raise AddressError(f"page {page * PAGE:#x} is fenced: no TLB entry maps it")
        if self.views and self._yield_page(page, write, None):
            self.bump(code=write)
            raise NeedsRetry
        self.raw_mapped[page] = True

    def _yield_page(self, page: int, write: bool, keep: int | None) -> bool:
        """Make every view but `keep` give way to a new user of `page`: a dirty copy is written
        back; for a writer, every copy is dropped. True if any view had to give way."""
        gave_way = False
        for w in self.views.values():
            if w.slot == keep:
                continue
            st = w.state[page]
            if st == DIRTY or (st and write):
                if st == DIRTY:
                    self._writeback_page(w, page)
                if write:
                    w.state[page] = ABSENT
                gave_way = True
        return gave_way

    # -- accesses from outside the guest: the host, DMA, the PSP ---------------------------------------
    def read(self, spa: int, length: int, slot: int | None = None) -> bytes:
        """DRAM as seen through `slot`'s key (None: raw, as stored), coherent with every view."""
        self.check_range(spa, length)
        if length == 0:
            return b""
        p0, p1 = spa // PAGE, (spa + length + PAGE - 1) // PAGE
        if self.writeback(p0, p1):
            self.bump()
        if slot is None:
            return self.dram[spa:spa + length].tobytes()
        self.check_slot(slot)
        lo, hi = spa & ~15, (spa + length + 15) & ~15
        out = np.empty(hi - lo, dtype=np.uint8)
        self.engine.decrypt_into(slot, lo, self.dram[lo:hi], out)
        return out[spa - lo:spa - lo + length].tobytes()

    def write(self, spa: int, data: bytes, slot: int | None = None) -> None:
        """Write through `slot`'s key (None: raw). Drops every cached copy of the pages touched."""
        length = len(data)
        self.check_range(spa, length)
        if length == 0:
            return
        if slot is not None:
            self.check_slot(slot)
            if not self.engine.has_key(slot):
                raise AsidError(f"ASID {slot} has no key in the memory controller")
        p0, p1 = spa // PAGE, (spa + length + PAGE - 1) // PAGE
        dropped = self.invalidate(p0, p1)
        code = bool(self.code_pages[p0:p1].any())
        if dropped or code:
            # TLB entries into a dropped view page must go; translated code of a rewritten
            # page must go too. A write to a page only ever mapped raw needs neither.
            self.bump(code=code)
        src = np.frombuffer(bytes(data), dtype=np.uint8)
        if slot is None:
            self.dram[spa:spa + length] = src
            return
        lo, hi = spa & ~15, (spa + length + 15) & ~15
        plain = np.empty(hi - lo, dtype=np.uint8)
        if lo != spa or hi != spa + length:
            self.engine.decrypt_into(slot, lo, self.dram[lo:hi], plain)
        plain[spa - lo:spa - lo + length] = src
        self.engine.encrypt_into(slot, lo, plain, self.dram[lo:hi])

    def host_slot(self, c_bit: bool) -> int | None:
        """The key a host-side access uses: SME's when the host sets C (or always under TSME)."""
        return HOST_SLOT if (c_bit or self.tsme) else None

    def flush_all(self) -> None:
        """Write every dirty view back (what a power cycle or WBINVD leaves in DRAM)."""
        if self.writeback(0, self.size // PAGE):
            self.bump()

    def raw_dump(self, spa: int = 0, length: int | None = None) -> bytes:
        """DRAM exactly as stored, after caches are flushed: what a cold-boot attacker reads."""
        self.flush_all()
        length = self.size - spa if length is None else length
        self.check_range(spa, length)
        return self.dram[spa:spa + length].tobytes()
