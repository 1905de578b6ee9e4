"""One virtual CPU: Unicorn x86-64 plus the parts of an AMD core Unicorn does not have.

Unicorn gives us the instruction set. This module adds what SVM hardware does around it:
- intercepts: IN/OUT, CPUID, RDMSR/WRMSR, VMMCALL, VMGEXIT and HLT stop the guest precisely at
  the instruction and become a #VMEXIT (exits.py). Unicorn cannot hook RDMSR/WRMSR, and its IN/OUT
  hooks neither stop at the instruction nor report RIP reliably, so each code page is scanned
  once when it is first fetched and a code hook is placed on every candidate address; a hook fires
  only on a real instruction boundary, decodes the bytes there and exits with RIP already past
  the instruction (next-RIP). Nothing is added to the path of ordinary instructions.
- exception delivery through the guest's IDT (#PF with CR2 and error code, #GP, #UD, #DE, INT n;
  delivery.py): Unicorn stops at exceptions instead of delivering them. A fault while delivering
  is a double fault; a fault delivering that is a triple fault, reported as SHUTDOWN.
- the MMU (mmu.py) in the virtual-TLB fill hook, and TLB / translated-code flushes whenever the
  memory controller changed something a TLB entry points at.
- SEV_STATUS (MSR 0xC0010131) answered by the CPU itself from the guest's SEV features: the
  hypervisor cannot intercept it, so it cannot lie about it.
- SEV-ES (control.sev_es): the registers live in the encrypted VMSA between exits (vmsa.py: saved
  at every #VMEXIT, loaded and integrity-checked at every VMRUN). Intercepts other than HLT and
  VMGEXIT become #VC (vector 29, error code = the SVM exit code, RIP at the instruction) inside
  the guest instead of exits; the GHCB MSR (0xC0010130) is kept in the VMCB (`ghcb_msr`) by the
  CPU without an exit, as is SEV_STATUS. All of it happens at intercepts and exits only.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import cast

import capstone
from unicorn import (UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_ERR_EXCEPTION, UC_ERR_INSN_INVALID, UC_HOOK_BLOCK,
                     UC_HOOK_INSN_INVALID, UC_HOOK_INTR, UC_HOOK_TLB_FILL,
                     UC_PROT_ALL, UC_TLB_VIRTUAL, UcError)
from unicorn import x86_const as X

from hv.hw import ucraw
from hv.hw.addr import GPA, GVA, SPA
from hv.hw.debughooks import add_code_hook, remove_code_hook
from hv.hw.decode import fault_address
from hv.hw.delivery import (GP, HAS_ERROR_CODE as _HAS_ERROR_CODE, UD, VC, ExceptionDelivery,
                             TripleFault, _NoHandler)
from hv.hw.decode_intercept import Insn, decode_intercept
from hv.hw.intercepts import Intercepts
from hv.hw.exits import (BudgetExit, CpuidExit, HltExit, InternalErrorExit, InterruptedExit,
                         IoExit, MsrExit, NpfExit, ShutdownExit, VmExit, VmgexitExit,
                         VmmcallExit, VmrunFailed)
from hv.hw.memctl import HOST_SLOT, MemoryController, NeedsRetry
from hv.hw.mmu import (ACCESS_FETCH, ACCESS_READ, ACCESS_WRITE, FENCE_BASE, PROT_W, PROT_X,
                       GuestPageFault, Mmu, NestedFault, view_base)
from hv.hw.npt import NestedPageTable
from hv.hw.pvalidate import pvalidate
from hv.hw.snp_mmu import SnpMmu
from hv.hw.vmsa import VmsaUnit

__all__ = ["Cpu", "GPRS", "GuestControl", "MSR_GHCB", "MSR_SEV_STATUS", "SREGS", "VC"]

MSR_SEV_STATUS = 0xC0010131
MSR_GHCB = 0xC0010130
UNTIL = 1 << 63  # non-canonical: never reached by a guest
TCG_BUFFER_BYTES = 64 << 20

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
SREGS = ("cr0", "cr2", "cr3", "cr4", "cs", "ds", "es", "fs", "gs", "ss")
_REG = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in GPRS + SREGS}
_GPR_IDS = [_REG[n] for n in GPRS]
_FAST = frozenset(GPRS) | {"cr2", "cr3"}
# MSRs Unicorn implements itself and that a hypervisor does not intercept (passed through).
_NATIVE_MSRS = {0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084,
                0xC0000100, 0xC0000101, 0xC0000102, 0x00000010, 0x00000277}

_IN, _OUT, _CPUID, _RDMSR, _WRMSR, _PVALIDATE, _VMGEXIT = (
    Insn.IN, Insn.OUT, Insn.CPUID, Insn.RDMSR, Insn.WRMSR, Insn.PVALIDATE, Insn.VMGEXIT)
_ACCESS_NAMES = {ACCESS_READ: "read", ACCESS_WRITE: "write", ACCESS_FETCH: "fetch"}


@dataclass
class GuestControl:
    """The VMCB control bits hv models: which ASID and which protections this guest runs with."""

    asid: int
    npt: NestedPageTable
    sev: bool = False
    sev_es: bool = False
    cbitpos: int = 47
    # SEV-ES only. vmsa_spa: the VMCB's vmsa_pa, the host page holding the encrypted save area.
    # ghcb_msr: the VMCB's ghcb_gpa field, i.e. the guest's GHCB MSR, which the CPU keeps here
    # without an exit and the hypervisor reads (and answers in) at a VMGEXIT.
    vmsa_spa: SPA | None = None
    ghcb_msr: int = 0
    # SEV-SNP (implies sev and sev_es): the MMU checks the RMP (snp_mmu.py), PVALIDATE works.
    sev_snp: bool = False

    @property
    def sev_status(self) -> int:
        return (1 if self.sev else 0) | (2 if self.sev_es else 0) | (4 if self.sev_snp else 0)


class _Retry(Exception):
    pass


class Cpu(ExceptionDelivery):
    """A vCPU of one guest. `run()` executes until the next #VMEXIT and returns it."""

    def __init__(self, mc: MemoryController, control: GuestControl):
        self._mc = mc
        self.control = control
        self._mmu = (SnpMmu(mc, control.npt, control.asid, control.cbitpos) if control.sev_snp
                     else Mmu(mc, control.npt, control.asid, control.sev, control.cbitpos))
        uc = self._uc = ucraw.new_x86_64()
        # Translated code lives in a buffer Unicorn fills before it starts over (1 GiB by
        # default): a guest that keeps rewriting its code would make hv's memory grow with it.
        uc.ctl_set_tcg_buffer_size(TCG_BUFFER_BYTES)
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        self._r, self._w = ucraw.fast_registers(uc)
        self._start = ucraw.emu_starter(uc)
        # No `until` address: emulation ends only through emu_stop. Otherwise Unicorn probes the
        # until page at every entry and stop, which cost a TLB flush and a page walk per exit.
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        uc.mem_map_ptr(0, mc.size, UC_PROT_ALL, mc.dram.ctypes.data)
        uc.mem_map_ptr(FENCE_BASE, mc.fence_pages.size, UC_PROT_ALL, mc.fence_pages.ctypes.data)
        self._mapped_views: set[int] = set()
        if control.sev:
            self._map_view(control.asid)
        if mc.tsme:
            self._map_view(HOST_SLOT)
        uc.hook_add(UC_HOOK_TLB_FILL, self._on_fill)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        # Long mode with paging, as a 64-bit boot loader leaves it.
        uc.reg_write(X.UC_X86_REG_CR4, 0x000006A0)  # PAE, PGE, OSFXSR, OSXMMEXCPT
        uc.msr_write(0xC0000080, 0xD00)  # EFER: LME, LMA, NXE
        uc.reg_write(X.UC_X86_REG_CR0, 0x80010033)
        self._seen_epoch = mc.epoch
        self._seen_tb = mc.tb_epoch
        self._icpt = Intercepts(uc, self._on_intercept)
        self._flush_code = False
        self._resume = False
        self._wx_refused = -1  # host page whose write fill was last refused for W^X
        self._flush_due = False
        self._self_writers: set[int] = set()  # host pages whose code stores into themselves
        self._exit: VmExit | None = None
        self._dummy_fill = False
        self._fault_gva = 0
        self._fault: Exception | None = None
        self._pending: tuple[int, int | None, int | None] | None = None  # (vector, error, cr2)
        self._kick = threading.Event()
        self._kick_lock = threading.Lock()
        self._kick_repeater: threading.Thread | None = None
        self.counting = False
        self.instructions = 0
        self.budget: int | None = None
        self._block_counts: dict[tuple[int, int], int] = {}
        self._cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self.stats = {"exits": 0, "tlb_fills": 0, "exceptions": 0}
        self.trace = None  # a trace sink (set_trace); while None a fill pays one attribute check
        self.vmsa = VmsaUnit(uc, mc, control.asid) if control.sev_es else None

    # -- registers -----------------------------------------------------------------------------------
    def get_regs(self) -> dict[str, int]:
        return dict(zip(GPRS, self._uc.reg_read_batch(_GPR_IDS)))

    def set_regs(self, regs: dict[str, int]) -> None:
        for name, value in regs.items():
            self._w(_REG[name], value)

    def get_sregs(self) -> dict[str, object]:
        out: dict[str, object] = {n: self._uc.reg_read(_REG[n]) for n in SREGS}
        out["efer"] = self._uc.msr_read(0xC0000080)
        out["idtr"] = self._uc.reg_read(X.UC_X86_REG_IDTR)[1:3]
        out["gdtr"] = self._uc.reg_read(X.UC_X86_REG_GDTR)[1:3]
        return out

    def set_sregs(self, sregs: dict[str, object]) -> None:
        for name, value in sregs.items():
            if name == "efer":
                self._uc.msr_write(0xC0000080, int(cast(int, value)))
            elif name in ("idtr", "gdtr"):
                base, limit = cast("tuple[int, int]", value)
                reg = X.UC_X86_REG_IDTR if name == "idtr" else X.UC_X86_REG_GDTR
                self._uc.reg_write(reg, (0, base, limit, 0))
            elif name in ("cs", "ds", "es", "fs", "gs", "ss"):
                continue  # 64-bit flat segments; selectors are informational here
            else:
                self._uc.reg_write(_REG[name], int(cast(int, value)))
        self._flush()

    def reg(self, name: str) -> int:
        if name in _FAST:
            return self._r(_REG[name])
        return self._uc.reg_read(_REG[name])

    # -- running ------------------------------------------------------------------------------------
    def kick(self) -> None:
        """Stop the guest as soon as possible (thread-safe): run() returns InterruptedExit.

        Unicorn drops an emu_stop that comes while it is not emulating, so a kick between the
        run loop's look at the flag and emu_start would be lost and a guest that never exits
        would run on: the stop is repeated every few milliseconds until the run loop has taken
        the kick (both under one lock, so no stop lands after that)."""
        with self._kick_lock:
            self._kick.set()
            self._uc.emu_stop()
            if self._kick_repeater is None or not self._kick_repeater.is_alive():
                self._kick_repeater = threading.Thread(target=self._repeat_kick, daemon=True)
                self._kick_repeater.start()

    def _repeat_kick(self) -> None:
        while True:
            time.sleep(0.005)
            with self._kick_lock:
                if not self._kick.is_set():
                    return
                self._uc.emu_stop()

    def enable_counting(self, budget: int | None = None) -> None:
        """Count instructions (slow: a hook per translated block); stop after `budget`."""
        if not self.counting:
            self._uc.hook_add(UC_HOOK_BLOCK, self._on_block)
            self.counting = True
        self.budget = budget

    def run(self) -> VmExit:
        if self.control.sev and not self._mc.engine.has_key(self.control.asid):
            return VmrunFailed(f"ASID {self.control.asid} has no key: the PSP has not activated this guest")
        if self.vmsa is None:
            return self._run()
        if isinstance(self._mmu, SnpMmu):  # SEV-SNP
            failed = self._mmu.check_vmsa(self.control.vmsa_spa)
            if failed is not None:
                return VmrunFailed(failed)
        failed = self.vmsa.load(self.control.vmsa_spa)
        if failed is not None:
            return VmrunFailed(failed)
        exit_ = self._run()
        self.vmsa.save()
        return exit_

    def _run(self) -> VmExit:
        while True:
            if self._kick.is_set():
                with self._kick_lock:
                    self._kick.clear()
                return InterruptedExit()
            if self._pending is not None:
                try:
                    self._deliver_pending()
                except TripleFault as e:
                    # SEV-ES: the hypervisor learns that the guest died, not where (no RIP).
                    return ShutdownExit("triple fault" if self.control.sev_es else str(e))
                except NestedFault as e:
                    return NpfExit(e.gpa, e.error_code)
            self._sync_epochs()
            if self._flush_due:
                self._flush_due = False
                self._flush()
            if self._dummy_fill:
                self._dummy_fill = False
                self._flush()
            self._exit = None
            self._fault = None
            rip = self._r(X.UC_X86_REG_RIP)
            try:
                self._emu_start(rip)
            except UcError as err:
                fault, self._fault = self._fault, None
                if isinstance(fault, _Retry):
                    self._flush()
                    if self._flush_code:
                        self._flush_code = False
                        self._uc.ctl_flush_tb()
                    continue
                if isinstance(fault, GuestPageFault):
                    if fault.error_code >= 0 and not fault.error_code & 16:
                        fault.address = self._exact_address(fault.address)
                    self._raise_guest_fault(fault)
                    continue
                if isinstance(fault, NestedFault):
                    self.stats["exits"] += 1
                    insn = b""
                    gpa = fault.gpa
                    if fault.error_code & (1 << 32) and not fault.error_code & 16:
                        gpa = (gpa & ~0xFFF) | (self._exact_address(self._fault_gva) & 0xFFF)
                        if not self.control.sev_es:
                            insn = self.code_bytes(GVA(self.reg("rip")), 15)
                    return NpfExit(gpa, fault.error_code, insn)
                if self._pending is not None:
                    continue
                if err.errno == UC_ERR_INSN_INVALID:
                    self._pending = (UD, None, None)
                    continue
                if err.errno == UC_ERR_EXCEPTION:
                    self._pending = (GP, 0, None)
                    continue
                return InternalErrorExit(f"emulator error at RIP {self.reg('rip'):#x}: {err}")
            if self._exit is not None:
                self.stats["exits"] += 1
                exit_, self._exit = self._exit, None
                return exit_
            if self._pending is not None or self._resume:
                self._resume = False
                continue
            if self._kick.is_set():
                continue
            if self.budget is not None and self.instructions >= self.budget:
                return BudgetExit(self.instructions)
            rip = self._r(X.UC_X86_REG_RIP)
            if self.code_bytes(GVA(rip - 1), 1) == b"\xf4":
                # HLT (with or without prefixes) ends emulation silently, RIP past it: the only
                # way a run ends with no cause and no hook, so no HLT ever needs a hook.
                self.stats["exits"] += 1
                return HltExit()
            return InternalErrorExit(f"emulation stopped without a cause at RIP {self.reg('rip'):#x}")

    # -- TLB, translated code --------------------------------------------------------------------------
    def _map_view(self, slot: int) -> None:
        self._mc.view(slot)
        self._uc.mem_map_ptr(view_base(slot), self._mc.size, UC_PROT_ALL,
                            self._mc.views[slot].buf.ctypes.data)
        self._mapped_views.add(slot)

    def _sync_epochs(self) -> None:
        for slot in (self.control.asid if self.control.sev else None,
                     HOST_SLOT if self._mc.tsme else None):
            if slot is not None and self._mc.views.get(slot) is None:
                # The PSP retired this slot's view (new key); map the new one.
                self._uc.mem_unmap(view_base(slot), self._mc.size)
                self._map_view(slot)
        if self._seen_epoch != self._mc.epoch:
            self._seen_epoch = self._mc.epoch
            self._uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        if self._seen_tb != self._mc.tb_epoch:
            self._seen_tb = self._mc.tb_epoch
            self._uc.ctl_flush_tb()
            self._icpt.forget_code()  # code pages were rewritten from outside

    def _flush(self) -> None:
        self._uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def _on_fill(self, uc, vaddr, access, entry, _user):
        if self._exit is not None or vaddr >> 47 not in (0, 0x1FFFF):
            # Unicorn probes the `until` address while it stops after an intercept; give it a
            # harmless dummy entry and drop it before the guest runs again.
            self._dummy_fill = True
            entry.paddr = 0
            entry.perms = UC_PROT_ALL
            return True
        try:
            paddr, perms, t = self._mmu.fill(vaddr, access, self._r(X.UC_X86_REG_CR3))
        except NeedsRetry:
            self._fault = _Retry()
            return False
        except (GuestPageFault, NestedFault) as f:
            self._fault = f
            self._fault_gva = vaddr
            return False
        self.stats["tlb_fills"] += 1
        if self.trace is not None:
            self.trace("fill", gva=vaddr, gpa=t.gpa, spa=t.spa, c_bit=t.c_bit,
                       asid=self.control.asid, access=_ACCESS_NAMES.get(access, access))
        host_page = paddr >> 12
        if access == ACCESS_FETCH:
            lazy = host_page in self._self_writers
            verdict = self._icpt.on_fetch(vaddr & ~0xFFF, host_page, t,
                                          lambda: self._mmu.read_bytes(t, 0, 0x1000), lazy)
            if lazy:
                self._flush_due = True
            if verdict != "ok":
                # Write must go everywhere before this page runs, or hooks changed where code
                # may already be translated: flush (and drop translations), then fetch again.
                self._flush_code = verdict == "flush-code"
                self._fault = _Retry()
                return False
            perms &= ~PROT_W
        else:
            perms &= ~PROT_X  # only a fetch fill, after the scan, makes a page executable
            if perms & PROT_W:
                if access == ACCESS_WRITE:
                    if self._icpt.on_write(host_page):
                        if self._wx_refused != host_page and host_page not in self._self_writers:
                            self._wx_refused = host_page
                            self._fault = _Retry()  # execute must go everywhere first
                            return False
                        # Refused once already and fetched again since: the storing instruction
                        # is on this very page, and a retry would never end (nor would the
                        # single-instruction block the CPU re-runs a store with that modified its
                        # own block: the page stays marked). Let the store go ahead (this address
                        # loses execute now) and flush the TLB at the next stop, taking execute
                        # from any other mapping of the page.
                        self._self_writers.add(host_page)
                        self._flush_due = True
                    self._wx_refused = -1
                elif self._icpt.executable(host_page):
                    perms &= ~PROT_W  # the first write must come back here
                else:
                    self._icpt.on_write(host_page)
        entry.paddr = paddr
        entry.perms = perms
        return True

    # -- intercepted instructions ---------------------------------------------------------------------
    def code_bytes(self, gva: GVA, length: int) -> bytes:
        """Instruction bytes at `gva` as the CPU fetches them (private for an SEV guest)."""
        out = b""
        addr: int = gva
        while length > 0:
            page = addr & ~0xFFF
            t = self._icpt.translation(page)
            if t is None:
                try:
                    t = self._mmu.translate(addr, ACCESS_FETCH, self.reg("cr3"))
                    if t.slot is not None and not self._mc.fenced[t.spa >> 12]:
                        self._mc.fill_view(t.slot, t.spa >> 12, False)
                except (GuestPageFault, NestedFault, NeedsRetry):
                    break
            n = min(length, 0x1000 - (addr & 0xFFF))
            out += self._mmu.read_bytes(t, addr & 0xFFF, n)
            addr += n
            length -= n
        return out

    def _emu_start(self, rip: int) -> None:
        """uc.emu_start without the binding's per-call overhead (a few us of every exit)."""
        self._start(rip, UNTIL)
        if self._icpt.exception is not None:
            e, self._icpt.exception = self._icpt.exception, None
            raise e

    def _on_intercept(self, addr: int) -> None:
        page = addr & ~0xFFF
        t = self._icpt.translation(page)
        host_page = t.paddr >> 12 if t is not None else -1
        b = self._icpt.cached(host_page, addr & 0xFFF)
        if b is None:
            b = self.code_bytes(GVA(addr), 15)
            self._icpt.remember(host_page, addr & 0xFFF, b)
        d = decode_intercept(b)
        if d is None:
            return
        exit_: VmExit
        insn = d.insn  # compared with module constants: an enum member lookup costs ~70 ns
        if insn is _IN or insn is _OUT:
            port = d.port if d.port is not None else self._r(X.UC_X86_REG_RDX) & 0xFFFF
            is_in = insn is _IN
            value = 0 if is_in else self._r(X.UC_X86_REG_RAX) & ((1 << (8 * d.size)) - 1)
            exit_ = IoExit(port, d.size, is_in, value)
        elif insn is _CPUID:
            rax, rcx = self._r(X.UC_X86_REG_RAX), self._r(X.UC_X86_REG_RCX)
            exit_ = CpuidExit(rax & 0xFFFFFFFF, rcx & 0xFFFFFFFF)
        elif insn is _RDMSR or insn is _WRMSR:
            msr = self._r(X.UC_X86_REG_RCX) & 0xFFFFFFFF
            if msr in _NATIVE_MSRS:
                return
            is_write = insn is _WRMSR
            if not is_write and msr == MSR_SEV_STATUS:
                self._set_edx_eax(self.control.sev_status)
                self._w(X.UC_X86_REG_RIP, addr + d.length)
                return
            if msr == MSR_GHCB and self.control.sev_es:
                if is_write:
                    self.control.ghcb_msr = self._edx_eax()
                else:
                    self._set_edx_eax(self.control.ghcb_msr)
                self._w(X.UC_X86_REG_RIP, addr + d.length)
                return
            exit_ = MsrExit(msr, is_write, self._edx_eax() if is_write else 0)
        elif insn is _PVALIDATE:
            if self.control.sev_snp:
                self._pvalidate(addr, d.length)
            return  # elsewhere not an instruction: Unicorn raises #UD
        elif insn is _VMGEXIT:
            exit_ = VmgexitExit()
        else:
            exit_ = VmmcallExit()
        if self.control.sev_es and not isinstance(exit_, (HltExit, VmgexitExit)):
            self._raise_vc(exit_.code, addr)
            return
        self._exit = exit_
        self._w(X.UC_X86_REG_RIP, addr + d.length)
        self._uc.emu_stop()

    def _pvalidate(self, addr: int, length: int) -> None:
        """PVALIDATE (SEV-SNP), executed by the CPU itself: see hv/hw/pvalidate.py."""
        exit_ = pvalidate(cast(SnpMmu, self._mmu), self._r, self._w, self._flush, addr, length)
        if exit_ is None:
            return
        self._w(X.UC_X86_REG_RIP, addr)
        if isinstance(exit_, GuestPageFault):
            self._raise_guest_fault(exit_)
        else:
            self._exit = exit_
        self._uc.emu_stop()

    def _raise_vc(self, exit_code: int, rip: int) -> None:
        """SEV-ES: a non-automatic exit is a #VC in the guest, at the instruction, not an exit.

        Delivered right here in the hook (frame pushed, RIP = the handler), so emulation goes on
        without a stop and a restart, which would cost the guest its TLB; if the delivery itself
        faults, it is queued and handled (double fault, shutdown) by the run loop instead."""
        self._w(X.UC_X86_REG_RIP, rip)
        try:
            self._deliver(VC, exit_code, None)
        except (GuestPageFault, NestedFault, _NoHandler):
            self._w(X.UC_X86_REG_RIP, rip)
            self._pending = (VC, exit_code, None)
            self._uc.emu_stop()
            return
        self.stats["exceptions"] += 1

    def _exact_address(self, page: int) -> int:
        """Decode assist: the byte address on `page` that the instruction at RIP accessed."""
        rip = self.reg("rip")
        return fault_address(self.code_bytes(GVA(rip), 15), rip, self._reg_any, page)

    def _reg_any(self, name: str) -> int:
        if name in ("fs_base", "gs_base"):
            return self._uc.msr_read(0xC0000100 if name == "fs_base" else 0xC0000101)
        reg_id = getattr(X, f"UC_X86_REG_{name.upper()}", None)
        if reg_id is None:
            raise LookupError(f"no register {name!r}")
        return self._uc.reg_read(reg_id)

    def _edx_eax(self) -> int:
        return (self._r(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | (self._r(X.UC_X86_REG_RAX) & 0xFFFFFFFF)

    def _set_edx_eax(self, value: int) -> None:
        self._w(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
        self._w(X.UC_X86_REG_RDX, (value >> 32) & 0xFFFFFFFF)

    def _on_invalid(self, uc, _user):
        # VMMCALL/VMGEXIT land here when they were not caught by a scan hook (code written after
        # its page was scanned); anything else is #UD.
        rip = self._r(X.UC_X86_REG_RIP)
        b = self.code_bytes(GVA(rip), 4)
        if b[:3] == b"\x0f\x01\xd9":
            if self.control.sev_es:
                self._raise_vc(VmmcallExit.code, rip)
                return True
            self._exit = VmmcallExit()
            self._w(X.UC_X86_REG_RIP, rip + 3)
            uc.emu_stop()
            return True
        if b[:4] == b"\xf3\x0f\x01\xd9":
            self._exit = VmgexitExit()
            self._w(X.UC_X86_REG_RIP, rip + 4)
            uc.emu_stop()
            return True
        if b[:4] == b"\xf2\x0f\x01\xff" and self.control.sev_snp:
            self._pvalidate(rip, 4)
            if self._exit is None and self._pending is None:
                self._resume = True  # stop, then go on past it with the TLB PVALIDATE left
                uc.emu_stop()
            return True
        return False

    def _on_intr(self, uc, intno, _user):
        self._pending = (intno, 0 if intno in _HAS_ERROR_CODE else None, None)
        uc.emu_stop()

    def _on_block(self, uc, address, size, _user):
        n = self._block_counts.get((address, size))
        if n is None:
            n = sum(1 for _ in self._cs.disasm_lite(self.code_bytes(address, size), address)) or 1
            self._block_counts[(address, size)] = n
        self.instructions += n
        if self.budget is not None and self.instructions >= self.budget:
            uc.emu_stop()

    # -- debugging: breakpoints, single steps, translation and traces for a debugger ----------------
    def add_code_hook(self, callback, address: int | None = None):
        """Call `callback(address, size)` before the instruction at `address` executes (before
        every instruction when None); a callback that calls kick() stops the guest right there,
        RIP at the instruction. This is how breakpoints work here (hv.hw.debughooks)."""
        return add_code_hook(self._uc, callback, address)

    def remove_code_hook(self, handle) -> None:
        remove_code_hook(self._uc, handle)

    def debug_translate(self, gva: GVA) -> tuple[GPA, bool] | None:
        """(GPA, C-bit of the leaf) of `gva` through the guest's page tables as this core's MMU
        walks them (with the guest's key for an encrypted guest), or None when `gva` is not
        mapped. The debug port of the core: it reports the mapping, never data."""
        self._sync_epochs()  # a key the PSP installed since the last run has a fresh view
        for _ in range(4):
            try:
                t = self._mmu.translate(gva, ACCESS_READ, self.reg("cr3"))
                return GPA(t.gpa | (gva & 0xFFF)), t.c_bit
            except NeedsRetry:
                continue  # a coherence conflict was resolved; the walk now succeeds
            except (GuestPageFault, NestedFault):
                return None
        return None

    def set_trace(self, sink) -> None:
        """Send TLB fills of this core and the coherence events of its memory controller to
        `sink(event, **fields)`; None stops tracing."""
        self.trace = sink
        self._mc.trace = sink
