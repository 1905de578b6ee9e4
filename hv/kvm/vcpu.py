"""A vCPU: run() loops over hardware exits, handles what KVM handles in the kernel, and returns
the rest to user space as one typed exit (hv.kvm.exits).

SEV-ES: once LAUNCH_UPDATE_VMSA has encrypted the vCPU's save area, `guest_state_protected` is
True and the register interfaces (KVM_GET/SET_REGS, KVM_GET/SET_SREGS) work on the only copy of
the registers the hypervisor can reach: the VMSA page as stored in DRAM, i.e. ciphertext.
get_regs()/get_sregs() return the 64-bit words found at each register's save-area offset (so
values that look random and say nothing about the guest); set_regs()/set_sregs() write the given
values at those offsets into the stored page, exactly what a hypervisor poking the VMSA does,
and the next run() returns FailEntry because the page no longer passes the CPU's integrity check.
Exits reach user space through the GHCB instead of registers (hv.kvm.sev_es).
"""

from __future__ import annotations

from collections import Counter

import capstone
from capstone import x86_const as CX
from sevwire import VMSA_QWORDS, VMSA_SEGMENTS, VMSA_SIZE

from hv.hw.addr import GPA, GVA, SPA
from hv.hw.cpu import GP, VC, Cpu
from hv.hw.exits import (BudgetExit, CpuidExit, HltExit, InternalErrorExit, InterruptedExit,
                         IoExit, MsrExit, NpfExit, ShutdownExit, SvmExit, VmgexitExit, VmmcallExit,
                         VmrunFailed)
from hv.kvm import exits as K
from hv.kvm.cpuid import cpuid_lookup
from hv.kvm.sev_es import EsExits

__all__ = ["GPRS_OF_REGS", "MemoryFault", "SREGS_OF_VMSA", "Vcpu", "vmsa_words"]

MSR_IA32_APIC_BASE = 0x1B
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF


class MemoryFault(K.KvmExit):
    """KVM_EXIT_MEMORY_FAULT: a nested page fault inside guest RAM that the hypervisor caused
    itself (an unmapped or protected page). This is the hook the attack lab traps pages with."""

    reason = "MEMORY_FAULT"

    def __init__(self, gpa: int, write: bool, fetch: bool, rmp: bool = False):
        self.gpa = gpa
        self.write = write
        self.fetch = fetch
        self.rmp = rmp  # SEV-SNP: the RMP refused the access (EXITINFO1 bit 31), not the NPT

    def __repr__(self) -> str:
        extra = ", rmp=True" if self.rmp else ""
        return f"MemoryFault(gpa={self.gpa:#x}, write={self.write}, fetch={self.fetch}{extra})"


class Vcpu:
    def __init__(self, vm, cpu: Cpu, index: int):
        self.vm = vm
        self._cpu = cpu
        self.index = index
        self._pending: K.KvmExit | None = None
        self._mmio_insn: tuple | None = None  # (instruction, destination of a read)
        self.exit_counts: Counter[str] = Counter()
        self._cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._cs.detail = True
        self.guest_state_protected = False  # set by the SEV-ES launch (SevGuest.launch_update_vmsa)
        self.es = EsExits(vm, cpu.control) if cpu.control.sev_es else None

    # -- registers (KVM_GET/SET_REGS, KVM_GET/SET_SREGS) --------------------------------------------------
    def get_regs(self) -> dict[str, int]:
        if self.guest_state_protected:
            return self._vmsa_words(GPRS_OF_REGS)
        return self._cpu.get_regs()

    def set_regs(self, regs: dict[str, int]) -> None:
        if self.guest_state_protected:
            self._poke_vmsa(regs)
            return
        self._cpu.set_regs(regs)

    def get_sregs(self) -> dict[str, object]:
        if self.guest_state_protected:
            return {**self._vmsa_words(SREGS_OF_VMSA)}
        return self._cpu.get_sregs()

    def set_sregs(self, sregs: dict[str, object]) -> None:
        if self.guest_state_protected:
            self._poke_vmsa({k: v for k, v in sregs.items() if isinstance(v, int)})
            return
        self._cpu.set_sregs(sregs)

    def attach_vmsa(self, spa: SPA | None) -> None:
        """KVM-internal: point the VMCB's vmsa_pa at an encrypted save area (None: detach)."""
        self._cpu.control.vmsa_spa = spa
        self.guest_state_protected = spa is not None

    @property
    def vmsa_spa(self) -> SPA | None:
        """Host physical address of this vCPU's VMSA page (SEV-ES), as KVM allocated it."""
        return self._cpu.control.vmsa_spa

    def _vmsa_spa(self) -> SPA:
        spa = self.vmsa_spa
        if spa is None:
            raise ValueError("this vCPU has no VMSA")
        return spa

    def _vmsa_words(self, names) -> dict[str, int]:
        return vmsa_words(self.vm.host.read(self._vmsa_spa(), VMSA_SIZE), names)

    def _poke_vmsa(self, values: dict[str, int]) -> None:
        for name, value in values.items():
            if name not in _VMSA_OFF:
                raise ValueError(f"{name!r} has no place in the VMSA")
            self.vm.host.write(SPA(self._vmsa_spa() + _VMSA_OFF[name]), (int(value) & _MASK64).to_bytes(8, "little"))

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        self._cpu.inject(vector, error_code)

    def kick(self) -> None:
        """Make a running run() return Intr as soon as possible (thread-safe)."""
        self._cpu.kick()

    def enable_counting(self, budget: int | None = None) -> None:
        self._cpu.enable_counting(budget)

    @property
    def instructions(self) -> int | None:
        return self._cpu.instructions if self._cpu.counting else None

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._cpu.stats)

    def code_bytes(self, gva: GVA, length: int) -> bytes:
        """Decode-assist bytes at RIP-like addresses, for crash reports of plain guests (none for
        an SEV-ES guest: the hardware gives KVM no instruction bytes of a protected guest)."""
        if self.es is not None:
            return b""
        return self._cpu.code_bytes(gva, length)

    # -- debugging (KVM_SET_GUEST_DEBUG, KVM_TRANSLATE) and tracing ----------------------------------------
    def add_code_hook(self, callback, address: int | None = None):
        """A guest-debug hook: `callback(address, size)` before the instruction at `address`
        (every instruction when None). Kick the vCPU from it to stop at that instruction."""
        return self._cpu.add_code_hook(callback, address)

    def remove_code_hook(self, handle) -> None:
        self._cpu.remove_code_hook(handle)

    def translate(self, gva: GVA) -> tuple[GPA, bool] | None:
        """KVM_TRANSLATE: (GPA, C-bit) of a guest-virtual address, None when unmapped. For an
        encrypted guest the walk is the CPU's, through the guest's key: the hypervisor learns
        the mapping, not the contents (see docs/debugging.md)."""
        return self._cpu.debug_translate(gva)

    def set_trace(self, sink) -> None:
        """Send TLB fills and coherence events to `sink(event, **fields)` (None: off)."""
        self._cpu.set_trace(sink)

    # -- run ------------------------------------------------------------------------------------------------
    def complete_exit(self) -> None:
        """Finish the instruction of the last exit with what user space filled in, without
        entering the guest (run() does it first; a VM about to be saved or sent does it alone)."""
        if self.es is not None and self.es.busy:
            self.es.complete(self._pending)
            self._pending = None
        self._complete()

    def run(self) -> K.KvmExit:
        self.complete_exit()
        while True:
            e = self._cpu.run()
            if self.es is not None and isinstance(e, VmgexitExit):
                out = self.es.vmgexit()
            else:
                out = self._handle(e)
            if out is not None:
                self.exit_counts[out.reason] += 1
                self._pending = out
                return out

    def _complete(self) -> None:
        """Finish the instruction of the previous exit with what user space filled in."""
        p, self._pending = self._pending, None
        if isinstance(p, K.Io) and p.is_in:
            self._set_partial("rax", p.size, p.data)
        elif isinstance(p, K.Mmio) and self._mmio_insn is not None:
            insn, reg = self._mmio_insn
            self._mmio_insn = None
            if not p.is_write and reg is not None:
                self._write_reg_sized(reg, p.data)
            self._cpu.set_regs({"rip": self._cpu.reg("rip") + insn.size})
        elif isinstance(p, K.Rdmsr):
            if p.error:
                self._cpu.inject(GP, 0)
            else:
                self._cpu.set_regs({"rax": p.data & 0xFFFFFFFF, "rdx": (p.data >> 32) & 0xFFFFFFFF})
        elif isinstance(p, K.Wrmsr) and p.error:
            self._cpu.inject(GP, 0)
        elif isinstance(p, K.Hypercall):
            self._cpu.set_regs({"rax": p.ret & _MASK64})

    def _handle(self, e) -> K.KvmExit | None:
        match e:
            case IoExit(port=port, size=size, is_in=is_in, value=value):
                return K.Io(port, size, is_in, value)
            case CpuidExit(leaf=leaf, subleaf=subleaf):
                a, b, c, d = cpuid_lookup(self.vm.cpuid, leaf, subleaf)
                self._cpu.set_regs({"rax": a, "rbx": b, "rcx": c, "rdx": d})
                return None
            case MsrExit(msr=msr, is_write=False):
                if msr == MSR_IA32_APIC_BASE:
                    self._cpu.set_regs({"rax": 0xFEE00900, "rdx": 0})
                    return None
                if msr in self.vm.msrs:
                    v = self.vm.msrs[msr]
                    self._cpu.set_regs({"rax": v & 0xFFFFFFFF, "rdx": v >> 32})
                    return None
                return K.Rdmsr(msr)
            case MsrExit(msr=msr, is_write=True, value=value):
                return K.Wrmsr(msr, value)
            case VmmcallExit():
                r = self._cpu.get_regs()
                return K.Hypercall(r["rax"], (r["rbx"], r["rcx"], r["rdx"], r["rsi"]))
            case VmgexitExit():
                return K.InternalError("VMGEXIT from a guest that is not SEV-ES")
            case HltExit():
                return K.Hlt()
            case NpfExit(gpa=gpa, error_code=code, insn_bytes=insn):
                return self._npf(gpa, code, insn)
            case ShutdownExit(reason=reason):
                return K.Shutdown(reason)
            case VmrunFailed(reason=reason):
                return K.FailEntry(reason)
            case InterruptedExit():
                return K.Intr("interrupted")
            case BudgetExit(instructions=n):
                return K.Intr(f"instruction budget of {n} exhausted")
            case InternalErrorExit(reason=reason):
                return K.InternalError(reason)
        return K.InternalError(f"unhandled exit {e!r}")

    # -- MMIO -----------------------------------------------------------------------------------------------
    def _npf(self, gpa: int, code: int, insn_bytes: bytes) -> K.KvmExit | None:
        write, fetch = bool(code & 2), bool(code & 16)
        in_slot = any(s.gpa <= gpa < s.gpa + s.size for s in self.vm.slots.values())
        if in_slot or fetch or not code & (1 << 32):
            return MemoryFault(gpa, write, fetch, bool(code & (1 << 31)))
        if self.es is not None:
            # MMIO of an SEV-ES guest: KVM cannot decode an instruction it cannot read, so the
            # guest gets #VC(NPF) at the access and asks through the GHCB (MMIO_READ/WRITE). On
            # hardware KVM marks MMIO with reserved NPT bits and the CPU raises that #VC itself.
            self._cpu.inject(VC, SvmExit.NPF)
            return None
        try:
            insn = next(self._cs.disasm(insn_bytes, self._cpu.reg("rip"), 1))
        except StopIteration:
            return K.InternalError(f"MMIO at GPA {gpa:#x}: instruction bytes do not decode")
        if insn.id not in (CX.X86_INS_MOV, CX.X86_INS_MOVZX):
            return K.InternalError(f"MMIO at GPA {gpa:#x}: cannot emulate '{insn.mnemonic} {insn.op_str}'")
        ops = insn.operands
        mem = next((o for o in ops if o.type == CX.X86_OP_MEM), None)
        other = next((o for o in ops if o.type != CX.X86_OP_MEM), None)
        if mem is None or other is None:
            return K.InternalError(f"MMIO at GPA {gpa:#x}: unsupported operands '{insn.op_str}'")
        size = mem.size
        if ops[0].type == CX.X86_OP_MEM:  # store
            if other.type == CX.X86_OP_IMM:
                data = other.imm & ((1 << (8 * size)) - 1)
            else:
                data = self._read_reg(insn.reg_name(other.reg)) & ((1 << (8 * size)) - 1)
            self._mmio_insn = (insn, None)
            return K.Mmio(gpa, size, True, data)
        self._mmio_insn = (insn, (insn.reg_name(other.reg), other.size, insn.id == CX.X86_INS_MOVZX))
        return K.Mmio(gpa, size, False)

    def _read_reg(self, name: str) -> int:
        full, shift, width = _SUBREG[name]
        return (self._cpu.reg(full) >> shift) & ((1 << width) - 1)

    def _write_reg_sized(self, reg, data: int) -> None:
        name, _size, zext = reg
        full, shift, width = _SUBREG[name]
        if width == 32 or zext and width >= 32:
            self._cpu.set_regs({full: data & ((1 << width) - 1)})
        elif width == 64:
            self._cpu.set_regs({full: data & _MASK64})
        else:
            old = self._cpu.reg(full)
            mask = ((1 << width) - 1) << shift
            self._cpu.set_regs({full: (old & ~mask) | ((data << shift) & mask)})

    def _set_partial(self, full: str, size: int, data: int) -> None:
        if size == 4:
            self._cpu.set_regs({full: data & 0xFFFFFFFF})
        else:
            mask = (1 << (8 * size)) - 1
            self._cpu.set_regs({full: (self._cpu.reg(full) & ~mask) | (data & mask)})


def _subregs() -> dict[str, tuple[str, int, int]]:
    m: dict[str, tuple[str, int, int]] = {}
    for r in ("a", "b", "c", "d"):
        m[f"r{r}x"] = (f"r{r}x", 0, 64)
        m[f"e{r}x"] = (f"r{r}x", 0, 32)
        m[f"{r}x"] = (f"r{r}x", 0, 16)
        m[f"{r}l"] = (f"r{r}x", 0, 8)
        m[f"{r}h"] = (f"r{r}x", 8, 8)
    for r in ("si", "di", "bp", "sp"):
        m[f"r{r}"] = (f"r{r}", 0, 64)
        m[f"e{r}"] = (f"r{r}", 0, 32)
        m[r] = (f"r{r}", 0, 16)
        m[f"{r}l"] = (f"r{r}", 0, 8)
    for i in range(8, 16):
        m[f"r{i}"] = (f"r{i}", 0, 64)
        m[f"r{i}d"] = (f"r{i}", 0, 32)
        m[f"r{i}w"] = (f"r{i}", 0, 16)
        m[f"r{i}b"] = (f"r{i}", 0, 8)
    return m


_SUBREG = _subregs()

# Where KVM's register names sit in the VMSA (SEV-ES; hv.boot defines the save-area layout).
GPRS_OF_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
                "r12", "r13", "r14", "r15", "rip", "rflags")
SREGS_OF_VMSA = ("cr0", "cr2", "cr3", "cr4", "efer")
_VMSA_OFF = dict(VMSA_QWORDS)
_VMSA_OFF.update({f"{seg}_base": off + 8 for seg, off in VMSA_SEGMENTS.items()})


def vmsa_words(page: bytes, names) -> dict[str, int]:
    """The 64-bit word at each named register's save-area offset in a VMSA page. For the page as
    stored in DRAM that is ciphertext: what a hypervisor reading an SEV-ES guest's VMSA gets."""
    return {n: int.from_bytes(page[_VMSA_OFF[n]:_VMSA_OFF[n] + 8], "little") for n in names}
