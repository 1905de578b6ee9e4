"""Exception delivery into the guest's IDT, the part of an x86 core Unicorn leaves out.

Unicorn stops at exceptions instead of delivering them. The CPU pushes the frame (SS, RSP, RFLAGS,
CS, RIP and the error code where the vector has one) on the guest's stack through the same MMU
and coherence path as any guest access, and jumps to the gate's handler. A fault while
delivering is a double fault (#DF); a fault while delivering that is a triple fault, which the
hardware reports as SHUTDOWN.
"""

from __future__ import annotations

from typing import Callable

from unicorn import x86_const as X

from hv.hw.memctl import NeedsRetry
from hv.hw.mmu import ACCESS_READ, ACCESS_WRITE, GuestPageFault, Mmu
from hv.hw.ucraw import UcIntel
from hv.hw.snp_mmu import GuestVcFault

__all__ = ["DF", "ExceptionDelivery", "GP", "PF", "TripleFault", "UD", "VC", "VECTOR_NAMES"]

DE, DB, BP, UD, DF, GP, PF, VC = 0, 1, 3, 6, 8, 13, 14, 29
HAS_ERROR_CODE = {8, 10, 11, 12, 13, 14, 17, 21, 29}
VECTOR_NAMES = {0: "#DE", 1: "#DB", 3: "#BP", 6: "#UD", 8: "#DF", 13: "#GP", 14: "#PF", 29: "#VC"}


class TripleFault(Exception):
    pass


class _NoHandler(Exception):
    pass


class ExceptionDelivery:
    """Mixin for Cpu, which provides these:"""

    _uc: UcIntel
    _w: Callable[[int, int], None]
    _mmu: Mmu
    _pending: tuple[int, int | None, int | None] | None  # (vector, error code, CR2)
    stats: dict[str, int]
    reg: Callable[[str], int]
    _flush: Callable[[], None]

    # -- exceptions into the guest --------------------------------------------------------------------
    def _raise_guest_fault(self, f: GuestPageFault) -> None:
        if f.error_code < 0:
            self._pending = (GP, 0, None)
        elif isinstance(f, GuestVcFault):
            self._pending = (VC, f.error_code, None)
        else:
            self._pending = (PF, f.error_code, f.address)

    def inject(self, vector: int, error_code: int | None = None) -> None:
        """Queue an exception or interrupt for delivery at the next run (event injection)."""
        self._pending = (vector, error_code, None)

    def _deliver_pending(self) -> None:
        assert self._pending is not None
        vector, error, cr2 = self._pending
        self._pending = None
        self.stats["exceptions"] += 1
        try:
            self._deliver(vector, error, cr2)
        except GuestPageFault:
            if vector == DF:
                raise TripleFault("triple fault: the double-fault handler could not be reached")
            try:
                self._deliver(DF, 0, None)
            except (GuestPageFault, _NoHandler):
                raise TripleFault(
                    f"triple fault: exception {vector} could not be delivered, nor the double fault")
        except _NoHandler as e:
            if vector == DF:
                raise TripleFault(f"triple fault: {e}")
            try:
                self._deliver(DF, 0, None)
            except (GuestPageFault, _NoHandler):
                raise TripleFault(f"triple fault: {e} (and no double-fault handler)")

    def _deliver(self, vector: int, error: int | None, cr2: int | None) -> None:
        if cr2 is not None:
            # CR2 takes the faulting address when the #PF is raised, before the IDT is read: a
            # delivery that fails (a #DF, a triple fault) leaves it there for the crash report.
            self._w(X.UC_X86_REG_CR2, cr2)
        _sel, base, limit, _flags = self._uc.reg_read(X.UC_X86_REG_IDTR)
        if vector * 16 + 15 > limit:
            raise _NoHandler(f"exception {vector} ({VECTOR_NAMES.get(vector, 'interrupt')}) at RIP "
                             f"{self.reg('rip'):#x} with no IDT entry")
        gate = self._read_virt(base + vector * 16, 16)
        lo, _sel, _ist, attr, mid, hi = (int.from_bytes(gate[0:2], "little"), int.from_bytes(gate[2:4], "little"),
                                       gate[4], gate[5], int.from_bytes(gate[6:8], "little"),
                                       int.from_bytes(gate[8:12], "little"))
        if not attr & 0x80 or (attr & 0xF) not in (0xE, 0xF):
            raise _NoHandler(f"IDT entry {vector} is not a present 64-bit gate")
        handler = lo | mid << 16 | hi << 32
        regs = self._uc.reg_read_batch([X.UC_X86_REG_RIP, X.UC_X86_REG_RSP, X.UC_X86_REG_RFLAGS,
                                       X.UC_X86_REG_CS, X.UC_X86_REG_SS])
        rip, rsp, rflags, cs, ss = regs
        frame = [ss, rsp, rflags, cs, rip] + ([error] if error is not None else [])
        new_rsp = ((rsp & ~0xF) - 8 * len(frame)) & 0xFFFF_FFFF_FFFF_FFFF
        data = b"".join(v.to_bytes(8, "little") for v in reversed(frame))
        self._write_virt(new_rsp, data)
        if (attr & 0xF) == 0xE:
            rflags &= ~0x200  # interrupt gate: IF cleared
        rflags &= ~0x100  # TF
        self._uc.reg_write_batch([(X.UC_X86_REG_RSP, new_rsp), (X.UC_X86_REG_RFLAGS, rflags),
                                 (X.UC_X86_REG_RIP, handler)])

    def _read_virt(self, gva: int, length: int) -> bytes:
        return self._access_virt(gva, length, None)

    def _write_virt(self, gva: int, data: bytes) -> None:
        self._access_virt(gva, len(data), data)

    def _access_virt(self, gva: int, length: int, data: bytes | None) -> bytes:
        """Guest-virtual access by the CPU itself (exception frames): same MMU, same coherence."""
        out = b""
        pos = 0
        cr3 = self.reg("cr3")
        while pos < length:
            a = gva + pos
            n = min(length - pos, 0x1000 - (a & 0xFFF))
            while True:
                try:
                    paddr, _perms, t = self._mmu.fill(a, ACCESS_WRITE if data else ACCESS_READ, cr3)
                    break
                except NeedsRetry:
                    self._flush()
            if data is None:
                out += bytes(self._uc.mem_read(paddr + (a & 0xFFF), n))
            else:
                self._uc.mem_write(paddr + (a & 0xFFF), data[pos:pos + n])
            pos += n
        return out

