"""A vCPU for a whole operating system: what a stock kernel needs of an x86-64 core.

The small guests' Cpu (cpu.py) turns every intercept into a precise #VMEXIT through a scan of
each code page. A kernel has tens of thousands of candidate instructions, far more than Unicorn
can hook (it checks every code hook for every instruction it translates), and it needs things
the small guests never asked for: exceptions and interrupts delivered through its IDT with a
privilege change, SYSCALL, a TSC that agrees with its timer, and interrupts that arrive while
it computes. So this core, for plain guests:
- runs on Unicorn's own MMU over the guest's RAM (guest-physical = Unicorn-physical, the slot's
  host memory mapped at 0): no Python on the TLB-miss path;
- handles port I/O, CPUID and RDTSC/RDTSCP inside Unicorn's instruction hooks, synchronously
  (the platform devices are "in the kernel", as KVM's irqchip and PIT are), so none of them
  stops the guest;
- delivers exceptions, INT n, external interrupts and SYSCALL as the architecture does (64-bit
  IDT gates, IST stacks, the TSS's RSP0 on a change to CPL 0, error codes, IF cleared by
  interrupt gates); Unicorn stops at them instead, and refuses to load CS or SS of another
  privilege level through its register interface, so the CPL changes go through the saved CPU
  state (see _CpuState);
- stops only at clean points: a stop requested from another thread (a timer deadline, terminal
  input) raises a flag that a tiny machine-code block hook checks at the start of each
  translated block. Unicorn's own asynchronous stop is not clean: it is checked after guest
  loads and stores and restarts the instruction after its store happened, so a locked
  increment or an RMW on memory runs twice (measured: ~1 in 2 stops of such a loop).
"""

from __future__ import annotations

import ctypes
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from unicorn import (UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INSN_INVALID, UC_HOOK_INTR,
                     UC_PROT_ALL, UcError)
from unicorn import x86_const as X

from hv.hw import ucraw
from hv.hw.debughooks import add_code_hook, remove_code_hook
from hv.hw.osmem import PrivateRam
from hv.hw.pvalidate import OsValidation
from hv.hw.ucraw import UcContext, UcIntel

__all__ = ["OsBudget", "OsCpu", "OsExit", "OsHalt", "OsStop", "OsShutdown", "OsInterrupted", "OsVmgexit",
           "CpuStateError"]

_MASK64 = (1 << 64) - 1
_HAS_ERROR_CODE = {8, 10, 11, 12, 13, 14, 17, 21, 29, 30}
UD, DF, GP = 6, 8, 13
_IF, _TF, _NT, _RF, _VM, _AC = 0x200, 0x100, 0x4000, 0x10000, 0x20000, 0x40000
_ADDR = 0x000F_FFFF_FFFF_F000
# SVM exit codes (AMD APM vol. 2, appendix C); under SEV-ES, also the #VC error codes
EXIT_DR7_READ, EXIT_DR7_WRITE = 0x27, 0x37
EXIT_CPUID, EXIT_IOIO, EXIT_MSR, EXIT_VMMCALL, EXIT_WBINVD = 0x72, 0x7B, 0x7C, 0x81, 0x89
VC = 29  # the VMM communication exception
_VMGEXIT = b"\xf3\x0f\x01\xd9"  # REP VMMCALL
_PVALIDATE, _RMPADJUST = b"\xf2\x0f\x01\xff", b"\xf3\x0f\x01\xfe"
_CF = 1
_VMEXIT = 0x100  # QEMU reports an intercept as exception 0x100 + exit code
_EFER, _VM_HSAVE_PA, _EFER_SVME = 0xC0000080, 0xC0010117, 1 << 12
_HF_GUEST = 1 << 21
GHCB_MSR = 0xC0010130
_ES_VISIBLE = frozenset({"interrupt", "hlt", "vmgexit"})

MsrHandler = tuple[Callable[[], int], Callable[[int], None]]


class CpuStateError(RuntimeError):
    """The saved CPU state does not have the layout this module was written for."""


@dataclass(frozen=True)
class OsExit:
    """Why OsCpu.run() returned."""


@dataclass(frozen=True)
class OsHalt(OsExit):
    """HLT. With interrupts enabled the OS is idle until its next interrupt; with them disabled
    nothing but an NMI (which no device here raises) would wake the core: it has stopped."""
    interrupts_enabled: bool


@dataclass(frozen=True)
class OsInterrupted(OsExit):
    """A stop requested with request_stop() (timer, input, a debugger) or kick()."""


@dataclass(frozen=True)
class OsStop(OsExit):
    """A device asked to stop the machine from inside an I/O instruction (power off, reset)."""


@dataclass(frozen=True)
class OsVmgexit(OsExit):
    """An SEV-ES guest's VMGEXIT: the hypervisor reads the GHCB MSR (OsCpu.ghcb_msr) and the
    GHCB page it names, answers there, and runs the vCPU again (it resumes after the VMGEXIT)."""


@dataclass(frozen=True)
class OsBudget(OsExit):
    """The instruction budget (enable_counting) is spent."""
    instructions: int


@dataclass(frozen=True)
class OsShutdown(OsExit):
    """Triple fault, or an emulator error the guest cannot recover from."""
    reason: str


class _CpuState:
    """QEMU's CPUX86State as uc_context_save copies it (Unicorn 2.1.x, x86-64).

    Unicorn has no register for a #PF's error code or for the exception tracker that turns a
    second fault into #DF, and loads CS/SS only at the current privilege level; all of these
    live in the saved state. The offsets are checked against registers at start-up (check()),
    so a Unicorn with another layout fails loudly instead of corrupting a guest."""

    DATA = 40                  # the state's offset inside struct uc_context
    EIP, HFLAGS = 128, 176
    SEGS, SEG_SIZE = 184, 24   # segs[ES, CS, SS, DS, FS, GS]: selector, base, limit, flags
    CS, SS = 1, 2
    CR0 = 424
    ERROR_CODE, IS_INT, NEXT_EIP = 5384, 5388, 5392
    OLD_EXCEPTION = 5496
    HF_CPL = 3
    HF_CS32, HF_SS32, HF_CS64 = 1 << 4, 1 << 5, 1 << 15
    # flat 64-bit ring-0 code (P, S, type 0xB, L) and data (P, S, type 3, D/B) descriptors' flags
    CODE64_FLAGS = 0x00209B00 | (1 << 23)
    DATA_FLAGS = 0x00409300 | (1 << 23)

    def __init__(self, uc: UcIntel):
        self._uc = uc
        self._ctx = uc.context_save()
        self._base = ucraw.context_address(self._ctx) + self.DATA

    def get(self, off: int, fmt: str) -> int:
        return struct.unpack(fmt, ctypes.string_at(self._base + off, struct.calcsize(fmt)))[0]

    def put(self, off: int, fmt: str, value: int) -> None:
        data = struct.pack(fmt, value)
        ctypes.memmove(self._base + off, data, len(data))

    def save(self) -> None:
        self._uc.context_update(self._ctx)

    def restore(self) -> None:
        self._uc.context_restore(self._ctx)

    def set_ring0(self, cs: int, ss: int) -> None:
        for index, sel, flags in ((self.CS, cs, self.CODE64_FLAGS), (self.SS, ss, self.DATA_FLAGS)):
            off = self.SEGS + index * self.SEG_SIZE
            self.put(off, "<I", sel)
            ctypes.memmove(self._base + off + 8, struct.pack("<QII", 0, 0xFFFFFFFF, flags), 16)
        hflags = self.get(self.HFLAGS, "<I") & ~self.HF_CPL
        self.put(self.HFLAGS, "<I", hflags | self.HF_CS64 | self.HF_CS32 | self.HF_SS32)

    @classmethod
    def check(cls, uc: UcIntel) -> None:
        probe = {X.UC_X86_REG_RIP: 0x1122_3344_5566_7788, X.UC_X86_REG_RAX: 0x0BAD_F00D_CAFE_0001}
        saved = {r: uc.reg_read(r) for r in probe}
        for r, v in probe.items():
            uc.reg_write(r, v)
        state = cls(uc)
        ok = (state.get(0, "<Q") == probe[X.UC_X86_REG_RAX] and state.get(cls.EIP, "<Q") == probe[X.UC_X86_REG_RIP]
              and state.get(cls.CR0, "<Q") == uc.reg_read(X.UC_X86_REG_CR0)
              and state.get(cls.SEGS + cls.CS * cls.SEG_SIZE, "<I") == uc.reg_read(X.UC_X86_REG_CS)
              and state.get(cls.OLD_EXCEPTION, "<i") == -1)
        for r, v in saved.items():
            uc.reg_write(r, v)
        if not ok:
            raise CpuStateError("this Unicorn's saved CPU state has an unknown layout "
                                "(hv's OS core needs Unicorn 2.1.x)")


class _GuestMode:
    """The core runs the guest in SVM guest mode, so that chosen MSRs are intercepted precisely.

    Unicorn cannot hook RDMSR or WRMSR, but QEMU's core implements AMD's SVM: a VMRUN from a stub
    puts the core in guest mode with an MSR permission map, and an intercepted access then raises
    exception 0x100 + exit code (QEMU's #VMEXIT, which Unicorn hands to the interrupt hook instead
    of switching worlds) with the state at the instruction, nothing of it executed. The core
    emulates the access and resumes in guest mode; the host side of the VMRUN never runs again.
    The VMCB, the permission maps and the stub live in a region of Unicorn's physical space that
    is not guest memory (just below 1 TiB)."""

    BASE = (1 << 40) - 0x10000
    SIZE = 0x10000
    STUB, VMCB, HSAVE, IOPM, MSRPM, EMPTY = 0x0, 0x1000, 0x2000, 0x3000, 0x6000, 0x8000

    def __init__(self, uc: UcIntel, msrs, es: bool = False):
        self.mem = np.zeros(self.SIZE, dtype=np.uint8)
        uc.mem_map_ptr(self.BASE, self.SIZE, UC_PROT_ALL, self.mem.ctypes.data)
        put = self._put
        put(self.STUB, b"\x0f\x01\xd8\xf4")  # VMRUN; the guest's first instruction: HLT
        vmcb = self.VMCB
        # Intercepts: MSR_PROT, and under SEV-ES what becomes a #VC (CPUID, DR7, VMMCALL,
        # which VMGEXIT is, WBINVD); VMRUN itself, which the architecture requires.
        misc1 = 1 << 28 | (1 << 18 if es else 0)
        misc2 = 1 | ((1 << 1 | 1 << 9) if es else 0)
        put(vmcb + 0x04, struct.pack("<I", (1 << 7 | 1 << (16 + 7)) if es else 0))  # DR7 read, write
        put(vmcb + 0x0C, struct.pack("<II", misc1, misc2))
        put(vmcb + 0x40, struct.pack("<QQ", self.BASE + self.IOPM, self.BASE + self.MSRPM))
        put(vmcb + 0x58, struct.pack("<I", 1))  # guest ASID (QEMU's core ignores it)
        for msr in msrs:
            bit = self._msrpm_bit(msr)
            self.mem[self.MSRPM + bit // 8] |= 3 << (bit % 8)  # reads and writes
        # The state VMRUN loads: flat segments at the current mode, RIP at the HLT after VMRUN.
        for off, sel, attr in ((0x400, 0x18, 0xC93), (0x410, 0x10, 0x29B), (0x420, 0x18, 0xC93),
                               (0x430, 0x18, 0xC93)):
            put(vmcb + off, struct.pack("<HHIQ", sel, attr, 0xFFFFFFFF, 0))
        efer = uc.msr_read(_EFER)
        # An SEV-ES guest runs with EFER.SVME set (its VMSA's), which QEMU's core also needs to
        # decode VMMCALL, and so VMGEXIT, rather than raise #UD.
        put(vmcb + 0x4D0, struct.pack("<Q", efer | _EFER_SVME if es else efer & ~_EFER_SVME))
        put(vmcb + 0x548, struct.pack("<QQQ", uc.reg_read(X.UC_X86_REG_CR4),
                                      uc.reg_read(X.UC_X86_REG_CR3), uc.reg_read(X.UC_X86_REG_CR0)))
        put(vmcb + 0x570, struct.pack("<QQ", 2, self.BASE + self.STUB + 3))  # RFLAGS, RIP
        put(vmcb + 0x668, struct.pack("<Q", 0x0007040600070406))  # PAT
        uc.msr_write(_EFER, efer | _EFER_SVME)
        uc.msr_write(_VM_HSAVE_PA, self.BASE + self.HSAVE)
        uc.reg_write(X.UC_X86_REG_RAX, self.BASE + vmcb)
        uc.emu_start(self.BASE + self.STUB, 0)
        state = _CpuState(uc)
        if not state.get(_CpuState.HFLAGS, "<I") & _HF_GUEST:
            raise CpuStateError("this Unicorn did not enter SVM guest mode (VMRUN)")
        uc.reg_write(X.UC_X86_REG_RAX, 0)

    @property
    def empty_table(self) -> int:
        """A page of zeros outside guest memory: as CR3, no address translates."""
        return self.BASE + self.EMPTY

    def _put(self, off: int, data: bytes) -> None:
        self.mem[off:off + len(data)] = np.frombuffer(data, dtype=np.uint8)

    @staticmethod
    def _msrpm_bit(msr: int) -> int:
        """The read-intercept bit of `msr` in the MSR permission map (write: the next bit)."""
        for base, offset in ((0, 0), (0xC0000000, 0x800), (0xC0010000, 0x1000)):
            if base <= msr < base + 0x2000:
                return offset * 8 + (msr - base) * 2
        raise ValueError(f"MSR {msr:#x} is outside the ranges SVM's permission map covers")


class OsCpu:
    """One vCPU running a plain (unencrypted) operating system over `ram_size` bytes of RAM at
    host address `ram_ptr` (guest-physical 0). `pio_in(port, size) -> int` and
    `pio_out(port, size, value) -> bool` are the in-kernel port devices; pio_out returning True
    ends the run with OsStop at the next clean point after the OUT (before the next memory access
    or at the end of the block: a few more instructions may run), which is meant for ending the
    machine (power off, reset), not for resuming it at an exact instruction. `cpuid(leaf, subleaf)` answers CPUID;
    `tsc()` gives the TSC's value.

    An encrypted guest (`private`, hv.hw.osmem) sees its RAM a second time at 1 << `cbit`
    (Unicorn-physical), the plaintext of its private pages: its own page tables choose, through
    the C-bit, which one each access reaches. `msrs` maps MSR indices to (read, write) handlers;
    the core then runs in SVM guest mode so that those accesses, and only those, stop precisely
    (_GuestMode)."""

    def __init__(self, ram_ptr: int, ram_size: int, pio_in: Callable[[int, int], int],
                 pio_out: Callable[[int, int, int], bool],
                 cpuid: Callable[[int, int], tuple[int, int, int, int]], tsc: Callable[[], int],
                 tcg_buffer: int = 64 << 20, private: PrivateRam | None = None, cbit: int = 0,
                 msrs: Mapping[int, MsrHandler] | None = None, es: bool = False,
                 vc_msrs: frozenset[int] = frozenset(), validation: OsValidation | None = None):
        uc = self._uc = ucraw.new_x86_64(cpu=X.UC_CPU_X86_EPYC)
        _CpuState.check(uc)
        uc.ctl_set_tcg_buffer_size(tcg_buffer)
        self.ram_size = ram_size
        self._private = private
        self._cmask = 0
        self._r, self._w = ucraw.fast_registers(uc)  # 64-bit registers on the hot paths
        self._start = ucraw.emu_starter(uc)
        # The core's own reads and writes of guest memory (tables, IDT, TSS, frames) go straight
        # to the RAM Unicorn computes on: the plaintext of an encrypted guest.
        self._ram = (private.buf if private is not None
                     else np.ctypeslib.as_array((ctypes.c_uint8 * ram_size).from_address(ram_ptr)))
        self._ram64 = self._ram.view(np.uint64)
        if private is None:
            uc.mem_map_ptr(0, ram_size, UC_PROT_ALL, ram_ptr)
        else:
            # The guest computes on its plaintext, reached with and without the C-bit alike;
            # DRAM (ram_ptr) follows it through hv.hw.osmem.
            if not 32 <= cbit < 40 or private.size != ram_size:
                raise ValueError("an encrypted OS guest needs its C-bit below bit 40 and private "
                                 "RAM the size of its RAM")
            self._cmask = 1 << cbit
            for base, ptr in zip((0, self._cmask), private.alias_ptrs):
                uc.mem_map_ptr(base, ram_size, UC_PROT_ALL, ptr)
            private.shared_pages = self._shared_pages
        self._msrs = dict(msrs or {})
        self._vmexit: int | None = None
        # SEV-ES: what the hypervisor would intercept raises #VC in the guest instead, whose
        # handler asks through the GHCB; the GHCB MSR is the core's (the VMCB's ghcb_gpa).
        self.es = es
        self.ghcb_msr = 0
        self._vc_msrs = vc_msrs
        # SEV-SNP: PVALIDATE and RMPADJUST, which Unicorn does not know (#UD), against the RMP
        self._validation = validation
        if validation is not None and not es:
            raise ValueError("an SEV-SNP guest is an SEV-ES one")
        self._pending_vc: tuple[int, UcContext] | None = None
        if es:
            if private is None:
                raise ValueError("an SEV-ES guest is an encrypted one")
            self._msrs[GHCB_MSR] = (lambda: self.ghcb_msr, self._set_ghcb_msr)
        if self._msrs or es:
            self._guest_mode = _GuestMode(uc, [*self._msrs, *vc_msrs], es)
        self._pio_in, self._pio_out, self._cpuid, self._tsc = pio_in, pio_out, cpuid, tsc
        self._flag = ctypes.c_uint8(0)
        self._stop_hooks = ucraw.StopHooks()
        self._counter = (ctypes.c_uint64 * 2)(0, 0)
        self.budget: int | None = None
        self._flag_hook = ucraw.hook_add(uc, UC_HOOK_BLOCK, self._stop_hooks.flag_fn,
                                         ctypes.addressof(self._flag), 1, 0)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        for insn, fn in ((X.UC_X86_INS_CPUID, self._on_cpuid), (X.UC_X86_INS_RDTSC, self._on_rdtsc),
                         (X.UC_X86_INS_RDTSCP, self._on_rdtscp)):
            ucraw.insn_hook_add(uc, insn, fn)
        self._exception: int | None = None
        self._invalid: str | None = None  # after #UD: "" to deliver it, else why the guest stops
        self._syscall = False
        self._stop = False
        self._kicked = threading.Event()
        self.trace: Callable[..., None] | None = None  # trace(event, **fields); None: no tracing
        self.stats = {"exceptions": 0, "page_faults": 0, "interrupts": 0, "syscalls": 0,
                      "io": 0, "halts": 0, "vc": 0, "vmgexits": 0}

    # -- registers and memory --------------------------------------------------------------------------
    @property
    def uc(self) -> UcIntel:
        return self._uc

    def reg(self, reg_id: int) -> int:
        return self._uc.reg_read(reg_id)

    def set_reg(self, reg_id: int, value: int) -> None:
        self._uc.reg_write(reg_id, value)

    def enter_long_mode(self, gdt: tuple[int, int], cr3: int, code_selector: int,
                        data_selector: int) -> None:
        """The state a 64-bit boot loader leaves: paging and long mode on (CR0.PG/PE, CR4.PAE,
        EFER.LME/LMA), MTRRs enabled with write-back as the default type, the given GDT (base, limit) and page tables, flat 64-bit segments,
        interrupts off. The caller sets RIP and the argument registers."""
        uc = self._uc
        uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt[0], gdt[1], 0))
        uc.reg_write(X.UC_X86_REG_CR3, cr3)
        uc.reg_write(X.UC_X86_REG_CR4, 0x20)  # PAE
        uc.msr_write(_EFER, 0x500 | (_EFER_SVME if self.es else 0))  # LME, LMA (SVME: SEV-ES)
        uc.msr_write(0x2FF, 0xC06)  # MTRRdefType: MTRRs on, write-back (Linux then sets up PAT)
        uc.reg_write(X.UC_X86_REG_CR0, 0x80000011)  # PG, ET, PE
        uc.reg_write(X.UC_X86_REG_CS, code_selector)
        for reg in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES):
            uc.reg_write(reg, data_selector)
        uc.reg_write(X.UC_X86_REG_RFLAGS, 2)

    def translate(self, gva: int) -> int | None:
        """The guest-physical address of `gva` through the guest's 4-level tables, or None (an
        encrypted guest's C-bit is not part of it)."""
        paddr = self._walk(gva)
        return None if paddr is None else paddr & ~self._cmask

    def _in_ram(self, paddr: int, length: int) -> bool:
        return (paddr & ~self._cmask) + length <= self.ram_size

    def _walk(self, gva: int) -> int | None:
        """Where the core's own access to `gva` lands in Unicorn's physical space: the C-bit
        leads to the private plaintext, as the walk of the part does (its table reads too)."""
        table = self._r(X.UC_X86_REG_CR3) & _ADDR
        cmask, size, ram64 = self._cmask, self.ram_size, self._ram64
        for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
            addr = (table + ((gva >> shift) & 0x1FF) * 8) & ~cmask
            if addr + 8 > size:
                return None
            entry = int(ram64[addr >> 3])
            if not entry & 1:
                return None
            if level in (2, 3) and entry & 0x80:
                mask = (1 << shift) - 1
                return (entry & _ADDR & ~mask) | (gva & mask)
            table = entry & _ADDR
        return table | (gva & 0xFFF)

    def _shared_pages(self, out: np.ndarray) -> None:
        """Classify guest pages for hv.hw.osmem by the guest's mappings under its current CR3:
        True for a page some mapping reaches without the C-bit, False for one reached only with
        it; pages nothing maps keep their class."""
        assert self._private is not None
        buf, cmask, npages = self._private.buf, self._cmask, len(out)
        seen_private = np.zeros(npages, dtype=bool)
        seen_shared = np.zeros(npages, dtype=bool)
        addr = np.uint64(_ADDR & ~cmask)
        todo = [((self._uc.reg_read(X.UC_X86_REG_CR3) & _ADDR & ~cmask), 4)]
        visited = set()
        while todo:
            table, level = todo.pop()
            if table in visited or table + 0x1000 > self.ram_size:
                continue
            visited.add(table)
            entries = buf[table:table + 0x1000].view(np.uint64)
            present = entries[(entries & np.uint64(1)) != 0]
            if level > 1:
                big = (present & np.uint64(0x80)) != 0 if level in (2, 3) else np.zeros(len(present), bool)
                todo.extend((int(e & addr), level - 1) for e in present[~big])
                leaves, shift = present[big], 12 + 9 * (level - 1)
            else:
                leaves, shift = present, 12
            for e in leaves.tolist():
                first = (e & int(addr) & ~((1 << shift) - 1)) >> 12
                last = min(first + (1 << (shift - 12)), npages)
                if first < last:
                    (seen_private if e & cmask else seen_shared)[first:last] = True
        out[seen_private] = False
        out[seen_shared] = True

    def read_virt(self, gva: int, length: int) -> bytes | None:
        """What the hypervisor reads at `gva`: guest memory as stored in DRAM (an encrypted
        guest's private pages as ciphertext)."""
        return self._read_virt(gva, length, host=True)

    def _read_virt(self, gva: int, length: int, host: bool = False) -> bytes | None:
        out = b""
        while length > 0:
            n = min(length, 0x1000 - (gva & 0xFFF))
            paddr = self._walk(gva)
            if paddr is None or not self._in_ram(paddr, n):
                return None
            if host and self._private is not None:
                out += self._private.read(paddr & ~self._cmask, n)
            else:
                a = paddr & ~self._cmask
                out += self._ram[a:a + n].tobytes()
            gva, length = (gva + n) & _MASK64, length - n
        return out

    def _write_virt(self, gva: int, data: bytes) -> bool:
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, 0x1000 - ((gva + pos) & 0xFFF))
            paddr = self._walk((gva + pos) & _MASK64)
            if paddr is None or not self._in_ram(paddr, n):
                return False
            a = paddr & ~self._cmask
            self._ram[a:a + n] = np.frombuffer(data, dtype=np.uint8, count=n, offset=pos)
            pos += n
        return True

    # -- hooks (inside Unicorn) --------------------------------------------------------------------------
    def _emit(self, event: str, **fields) -> None:
        """A trace event (the caller checked self.trace). Of an SEV-ES guest the hypervisor sees
        only what reaches it: interrupts it injects, HLT and VMGEXIT (with the GHCB MSR), never
        the guest's registers, exceptions or system calls."""
        assert self.trace is not None
        if self.es:
            if event not in _ES_VISIBLE:
                return
            fields = {k: v for k, v in fields.items() if k not in ("rip", "cr2")}
        self.trace(event, **fields)

    def _at(self, rip: int) -> str:
        """Where, for a message the hypervisor reads: nothing of an SEV-ES guest's registers."""
        return "" if self.es else f" at RIP {rip:#x}"

    def _set_ghcb_msr(self, value: int) -> None:
        self.ghcb_msr = value & _MASK64

    def _vc_from_hook(self, code: int) -> None:
        """A #VC for the instruction an instruction hook is in (its RIP is that instruction's):
        keep the state as it is now, and make the core stop before anything after it touches
        memory: with an empty page table, the next access or fetch faults before it happens.
        run() then puts the kept state back and delivers the #VC (register-only instructions
        that ran in between are undone with it)."""
        if self._pending_vc is None:
            self._pending_vc = (code, self._uc.context_save())
            self._uc.reg_write(X.UC_X86_REG_CR3, self._guest_mode.empty_table)
        self._uc.emu_stop()

    def _on_in(self, uc, port, size, _user):
        if self.es:
            self._vc_from_hook(EXIT_IOIO)
            return self._r(X.UC_X86_REG_RAX) & ((1 << (8 * size)) - 1)
        self.stats["io"] += 1
        value = self._pio_in(port, size) & ((1 << (8 * size)) - 1)
        if self.trace is not None:
            self._emit("io", port=port, size=size, dir="in", value=value)
        return value

    def _on_out(self, uc, port, size, value, _user):
        if self.es:
            self._vc_from_hook(EXIT_IOIO)
            return
        self.stats["io"] += 1
        value &= (1 << (8 * size)) - 1
        if self.trace is not None:
            self._emit("io", port=port, size=size, dir="out", value=value)
        if self._pio_out(port, size, value):
            # A synchronous request from inside the instruction: Unicorn takes it at the next
            # check after a later access, which restarts that instruction before its store.
            self._stop = True
            uc.emu_stop()

    def _on_cpuid(self) -> int:
        r, w = self._uc.reg_read, self._uc.reg_write
        leaf = r(X.UC_X86_REG_EAX) & 0xFFFFFFFF
        a, b, c, d = self._cpuid(leaf, r(X.UC_X86_REG_ECX) & 0xFFFFFFFF)
        if leaf == 1:  # OSXSAVE mirrors CR4.OSXSAVE, as on the part
            c = (c & ~(1 << 27)) | ((r(X.UC_X86_REG_CR4) >> 18 & 1) << 27)
        w(X.UC_X86_REG_RAX, a)
        w(X.UC_X86_REG_RBX, b)
        w(X.UC_X86_REG_RCX, c)
        w(X.UC_X86_REG_RDX, d)
        return 1

    def _on_rdtsc(self) -> int:
        t = self._tsc() & _MASK64
        self._uc.reg_write(X.UC_X86_REG_RAX, t & 0xFFFFFFFF)
        self._uc.reg_write(X.UC_X86_REG_RDX, t >> 32)
        return 1

    def _on_rdtscp(self) -> int:
        self._uc.reg_write(X.UC_X86_REG_RCX, self._uc.msr_read(0xC0000103) & 0xFFFFFFFF)  # TSC_AUX
        return self._on_rdtsc()

    def _on_syscall(self, uc, _user):
        self._syscall = True
        uc.emu_stop()

    def _on_invalid(self, uc, _user):
        reason = self._snp_instruction()
        if reason is None:
            return True  # done in place: Unicorn goes on at the RIP it set, without a stop
        self._exception = UD
        self._invalid = reason  # "": a real #UD
        uc.emu_stop()
        return True

    def _on_intr(self, uc, intno, _user):
        if intno >= _VMEXIT:
            self._vmexit = intno - _VMEXIT
        else:
            self._exception = intno
        uc.emu_stop()

    def _intercept(self, code: int) -> OsExit | str | None:
        """An intercepted instruction (guest mode), nothing of it executed: the core emulates
        its own MSRs; under SEV-ES the rest raises #VC with the exit code, and a VMGEXIT goes to
        the hypervisor. Returns an exit for run() to return, a reason to stop, or None."""
        rip = self._r(X.UC_X86_REG_RIP)
        if code == EXIT_VMMCALL and self.es and self._read_virt(rip, 4) == _VMGEXIT:
            self._w(X.UC_X86_REG_RIP, rip + 4)
            self.stats["vmgexits"] += 1
            if self.trace is not None:
                self._emit("vmgexit", ghcb_msr=self.ghcb_msr)
            if self._private is not None and not self.ghcb_msr & 0xFFF:
                self._private.declare_shared(self.ghcb_msr)  # the GHCB: shared by definition
            return OsVmgexit()
        insn = self._read_virt(rip, 2)
        index = self._r(X.UC_X86_REG_RCX) & 0xFFFFFFFF
        own = code == EXIT_MSR and insn in (b"\x0f\x32", b"\x0f\x30") and index in self._msrs
        if not own:
            if self.es and code in (EXIT_CPUID, EXIT_MSR, EXIT_DR7_READ, EXIT_DR7_WRITE, EXIT_VMMCALL,
                                    EXIT_WBINVD):
                return self._vc(code)
            return f"unexpected intercept {code:#x}{self._at(rip)}"
        read, write = self._msrs[index]
        if insn == b"\x0f\x32":
            value = read() & _MASK64
            self._w(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
            self._w(X.UC_X86_REG_RDX, value >> 32)
        else:
            write((self._r(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32
                  | self._r(X.UC_X86_REG_RAX) & 0xFFFFFFFF)
        self._w(X.UC_X86_REG_RIP, rip + 2)
        return None

    def _snp_instruction(self) -> str | None:
        """PVALIDATE or RMPADJUST at RIP, which Unicorn raised #UD for (called from its
        invalid-instruction hook): executed against the RMP (hv.hw.pvalidate.OsValidation): RAX
        = status, CF for PVALIDATE = nothing changed. None when done, "" when the instruction
        is neither or the guest is not SNP (a real #UD), else why the guest stops (an RMP nested
        page fault: the hypervisor has no page to give it)."""
        v = self._validation
        if v is None:
            return ""
        rip = self._r(X.UC_X86_REG_RIP)
        insn = self._read_virt(rip, 4)
        if insn not in (_PVALIDATE, _RMPADJUST):
            return ""
        gva = self._r(X.UC_X86_REG_RAX)
        size = self._r(X.UC_X86_REG_RCX) & 0xFFFFFFFF
        paddr = self._walk(gva)
        name = "PVALIDATE" if insn == _PVALIDATE else "RMPADJUST"
        if paddr is None:
            return f"{name} of an unmapped address"
        gpa = paddr & ~self._cmask
        status: int | None
        if insn == _PVALIDATE:
            done = v.pvalidate(gpa, size, bool(self._r(X.UC_X86_REG_RDX) & 1))
            status = None if done is None else done[0]
            if done is not None:
                flags = self._r(X.UC_X86_REG_RFLAGS) & ~_CF
                self._w(X.UC_X86_REG_RFLAGS, flags | (_CF if done == (0, False) else 0))
        else:
            status = v.rmpadjust(gpa, size, self._r(X.UC_X86_REG_RDX))
        if status is None:
            return (f"RMP nested page fault: {name} of guest-physical {gpa & ~0xFFF:#x}, a page "
                    "the RMP does not give this guest there")
        self._w(X.UC_X86_REG_RAX, status)
        self._w(X.UC_X86_REG_RIP, rip + 4)
        return None

    def _vc(self, code: int) -> str | None:
        """Deliver #VC with `code` as its error code, at the current instruction."""
        self.stats["vc"] += 1
        if self.trace is not None:
            self._emit("vc", code=code)
        return self._deliver(VC, code, hardware=True)

    # -- running -----------------------------------------------------------------------------------------
    def enable_counting(self, budget: int) -> None:
        """Count instructions (a code hook before each one: slow) and end the run with
        OsBudget after `budget` of them."""
        self._counter[1] = budget
        self.budget = budget
        self._count_hook = ucraw.hook_add(self._uc, UC_HOOK_CODE, self._stop_hooks.count_fn,
                                          ctypes.addressof(self._counter), 1, 0)

    @property
    def instructions(self) -> int | None:
        """Instructions run so far when counting, else None."""
        if self.budget is None:
            return None
        return min(self._counter[0], self.budget)

    def request_stop(self) -> None:
        """Thread-safe: stop at the start of the next translated block (a clean point)."""
        self._flag.value = 1

    def stop_here(self) -> None:
        """From inside a hook on the vCPU's thread (a breakpoint's code hook): stop before the
        instruction, cleanly; run() returns OsInterrupted."""
        self._flag.value = 1
        self._uc.emu_stop()

    def add_code_hook(self, callback: Callable[[int, int], None], address: int | None = None):
        """Call `callback(address, size)` before the instruction at `address` (every instruction
        when None); a callback that calls stop_here() stops the guest there (hv.hw.debughooks)."""
        return add_code_hook(self._uc, callback, address)

    def remove_code_hook(self, handle) -> None:
        remove_code_hook(self._uc, handle)

    def kick(self) -> None:
        """Thread-safe: stop as soon as possible, to end the run (not clean: never resume)."""
        self._kicked.set()
        self._flag.value = 1
        self._uc.emu_stop()

    def run(self) -> OsExit:
        uc = self._uc
        while True:
            if self._kicked.is_set():
                return OsInterrupted()
            self._flag.value = 0
            if self._private is not None and self._private.pending() and self._private.refresh():
                uc.ctl_flush_tb()  # plaintext changed under code that may have been translated
            rip = self._r(X.UC_X86_REG_RIP)
            try:
                self._start(rip, 0)
            except UcError as e:
                return OsShutdown(f"emulator error{self._at(self._r(X.UC_X86_REG_RIP))}: {e}")
            finally:
                if self._private is not None:
                    self._private.guest_ran()
            if self._pending_vc is not None:
                code, ctx = self._pending_vc
                self._pending_vc, self._exception, self._vmexit, self._invalid = None, None, None, None
                self._syscall = False
                uc.context_restore(ctx)
                failed = self._vc(code)
                if failed is not None:
                    return OsShutdown(failed)
                continue
            if self._vmexit is not None:
                code, self._vmexit = self._vmexit, None
                out = self._intercept(code)
                if isinstance(out, str):
                    return OsShutdown(out)
                if out is not None:
                    return out
                continue
            if self._exception is not None:
                vector, self._exception = self._exception, None
                if self._invalid is not None:
                    failed, self._invalid = self._invalid, None
                    if failed == "":
                        failed = self._deliver(UD, None, hardware=True)
                else:
                    failed = self._exception_entry(vector)
                if failed is not None:
                    return OsShutdown(failed)
                continue
            if self._syscall:
                self._syscall = False
                self.stats["syscalls"] += 1
                if self.trace is not None:
                    self._emit("syscall", nr=uc.reg_read(X.UC_X86_REG_RAX),
                               rip=uc.reg_read(X.UC_X86_REG_RIP) - 2)
                self._syscall_entry()
                continue
            if self._stop:
                self._stop = False
                return OsStop()
            if self.budget is not None and self._counter[0] > self.budget:
                return OsBudget(self.budget)
            if self._flag.value or self._kicked.is_set():
                return OsInterrupted()
            rip = uc.reg_read(X.UC_X86_REG_RIP)
            if self._read_virt(rip - 1, 1) == b"\xf4":
                self.stats["halts"] += 1
                if self.trace is not None:
                    self._emit("hlt", rip=rip - 1)
                return OsHalt(bool(uc.reg_read(X.UC_X86_REG_RFLAGS) & _IF))
            return OsShutdown(f"emulation stopped without a cause{self._at(rip)}")

    def close(self) -> None:
        """Release what the core holds outside Unicorn (an encrypted guest's memory tracking)."""
        if self._private is not None:
            self._private.close()

    def memory_stats(self) -> dict[str, int]:
        """Pages an encrypted guest's memory moved to DRAM (encrypted) and back (decrypted)."""
        p = self._private
        return {"pages_encrypted": p.stats["pages_encrypted"] if p else 0,
                "pages_decrypted": p.stats["pages_decrypted"] if p else 0}

    def interrupts_enabled(self) -> bool:
        """IF is set and no STI/MOV SS shadow holds interrupts off for one instruction."""
        if not self._uc.reg_read(X.UC_X86_REG_RFLAGS) & _IF:
            return False
        state = _CpuState(self._uc)
        return not state.get(_CpuState.HFLAGS, "<I") & (1 << 3)  # HF_INHIBIT_IRQ

    def inject_interrupt(self, vector: int) -> bool:
        """Deliver an external interrupt now (the caller checked interrupts_enabled())."""
        self.stats["interrupts"] += 1
        if self.trace is not None:
            self._emit("interrupt", vector=vector, rip=self._uc.reg_read(X.UC_X86_REG_RIP))
        return self._deliver(vector, None, hardware=True) is None

    # -- delivery ----------------------------------------------------------------------------------------
    def _exception_entry(self, vector: int) -> str | None:
        state = _CpuState(self._uc)
        error = state.get(_CpuState.ERROR_CODE, "<i") & 0xFFFFFFFF
        soft = bool(state.get(_CpuState.IS_INT, "<i"))
        next_rip = state.get(_CpuState.NEXT_EIP, "<Q")
        state.put(_CpuState.OLD_EXCEPTION, "<i", -1)  # delivered here: no #DF for the next one
        # Taken: QEMU keeps the INT n flag until its next exception, and Unicorn moves RIP to
        # the INT's next instruction after any exception while it is set, an intercept too.
        state.put(_CpuState.IS_INT, "<i", 0)
        state.restore()
        self.stats["exceptions"] += 1
        if vector == 14:
            self.stats["page_faults"] += 1
        if self.trace is not None:
            fields = {"cr2": self._uc.reg_read(X.UC_X86_REG_CR2)} if vector == 14 else {}
            if vector in _HAS_ERROR_CODE and not soft:
                fields["error_code"] = error
            self._emit("exception", vector=vector, rip=self._uc.reg_read(X.UC_X86_REG_RIP), **fields)
        if soft:
            # INT n, INT3, INTO: a trap; the frame holds the next instruction (but a #GP for a
            # gate the caller may not use is a fault at the INT itself).
            rip = self._soft_interrupt_rip(vector, next_rip)
            self._uc.reg_write(X.UC_X86_REG_RIP, next_rip)
            problem = self._try_deliver(vector, None, hardware=False)
            if problem is None:
                return None
            self._uc.reg_write(X.UC_X86_REG_RIP, rip)
            if problem == "gp":
                return self._deliver(GP, vector * 8 + 2, True, 1)
            return self._deliver(DF, 0, True, 2)
        return self._deliver(vector, error if vector in _HAS_ERROR_CODE else None, hardware=True)

    def _soft_interrupt_rip(self, vector: int, next_rip: int) -> int:
        """Where INT n (CD ib), INT3 (CC), INTO (CE) or INT1 (F1) started: Unicorn reports the
        next instruction by then. The vector tells `CD CC` (INT 0xCC) from a lone CC."""
        tail = self._read_virt((next_rip - 2) & _MASK64, 2) or b""
        if len(tail) == 2 and tail[0] == 0xCD and tail[1] == vector:
            return (next_rip - 2) & _MASK64
        return (next_rip - 1) & _MASK64

    def _deliver(self, vector: int, error: int | None, hardware: bool, depth: int = 0) -> str | None:
        """Push the frame and enter the handler; a fault on the way is #DF, then a triple fault."""
        uc = self._uc
        problem = self._try_deliver(vector, error, hardware)
        if problem is None:
            return None
        if depth < 2 and vector != DF:
            return self._deliver(DF, 0, True, 2)
        return (f"triple fault: vector {vector} could not be delivered"
                f"{self._at(self._r(X.UC_X86_REG_RIP))} ({problem})")

    def _try_deliver(self, vector: int, error: int | None, hardware: bool) -> str | None:
        uc = self._uc
        _sel, idt_base, idt_limit, _flags = uc.reg_read(X.UC_X86_REG_IDTR)
        if vector * 16 + 15 > idt_limit:
            return "no IDT entry"
        gate = self._read_virt(idt_base + vector * 16, 16)
        if gate is None:
            return "IDT not mapped"
        offset = (int.from_bytes(gate[0:2], "little") | int.from_bytes(gate[6:8], "little") << 16
                  | int.from_bytes(gate[8:12], "little") << 32)
        selector, ist, attr = int.from_bytes(gate[2:4], "little"), gate[4] & 7, gate[5]
        if not attr & 0x80 or attr & 0xF not in (0xE, 0xF):
            return "not a present 64-bit gate"
        r = self._r  # straight through libunicorn: a selector is the low 16 bits it writes
        rip, rsp, rflags = r(X.UC_X86_REG_RIP), r(X.UC_X86_REG_RSP), r(X.UC_X86_REG_RFLAGS)
        cs, ss = r(X.UC_X86_REG_CS) & 0xFFFF, r(X.UC_X86_REG_SS) & 0xFFFF
        cpl = cs & 3
        if not hardware and (attr >> 5) & 3 < cpl:
            return "gp"  # INT n through a gate the caller's privilege may not use
        if ist:
            new_rsp = self._tss_stack(3 + ist)  # IST1..7 follow RSP0..2 and a reserved slot
        elif cpl:
            new_rsp = self._tss_stack(0)
        else:
            new_rsp = rsp
        if new_rsp is None:
            return "TSS not mapped"
        new_rsp &= ~0xF
        frame = [rip, cs, rflags, rsp, ss]
        if error is not None:
            frame.insert(0, error)
        new_rsp = (new_rsp - 8 * len(frame)) & _MASK64
        if not self._write_virt(new_rsp, b"".join(struct.pack("<Q", v & _MASK64) for v in frame)):
            return "stack not mapped"
        new_flags = rflags & ~(_TF | _NT | _RF | _VM)
        if attr & 0xF == 0xE:
            new_flags &= ~_IF
        if cpl:
            self._enter_ring0(selector, 0, offset, new_rsp, new_flags)
        else:
            w = self._w
            w(X.UC_X86_REG_RSP, new_rsp)
            w(X.UC_X86_REG_RFLAGS, new_flags)
            w(X.UC_X86_REG_RIP, offset)
        return None

    def _tss_stack(self, index: int) -> int | None:
        _sel, base, _limit, _flags = self._uc.reg_read(X.UC_X86_REG_TR)
        data = self._read_virt(base + 4 + 8 * index, 8)
        return None if data is None else int.from_bytes(data, "little")

    def _enter_ring0(self, cs: int, ss: int, rip: int, rsp: int, rflags: int) -> None:
        state = _CpuState(self._uc)
        state.set_ring0(cs & ~3, ss)
        state.restore()
        self._uc.reg_write_batch([(X.UC_X86_REG_RIP, rip), (X.UC_X86_REG_RSP, rsp),
                                  (X.UC_X86_REG_RFLAGS, rflags)])

    def _syscall_entry(self) -> None:
        """SYSCALL (Unicorn only adds 2 to RIP): RCX = next RIP, R11 = RFLAGS, CS/SS from STAR,
        RIP = LSTAR, RFLAGS &= ~FMASK, CPL 0."""
        uc = self._uc
        rip, rflags = uc.reg_read(X.UC_X86_REG_RIP), uc.reg_read(X.UC_X86_REG_RFLAGS)
        star, lstar, fmask = (uc.msr_read(m) for m in (0xC0000081, 0xC0000082, 0xC0000084))
        uc.reg_write(X.UC_X86_REG_RCX, rip)
        uc.reg_write(X.UC_X86_REG_R11, rflags & ~_RF)
        cs = (star >> 32) & 0xFFFC
        self._enter_ring0(cs, cs + 8, lstar, uc.reg_read(X.UC_X86_REG_RSP),
                          (rflags & ~fmask & ~_RF) | 2)
