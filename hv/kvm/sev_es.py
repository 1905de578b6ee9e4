"""VMGEXIT handling for one SEV-ES vCPU: the GHCB MSR protocol and GHCB requests (KVM's
sev_handle_vmgexit), turned into the same KVM exits a plain guest's intercepts produce.

The hypervisor never sees the guest's registers here: only what the guest chose to put into its
GHCB (a shared page) or into the GHCB MSR, which the CPU keeps in the VMCB (`ghcb_msr`). Every
malformed request gets the GHCB specification's answer (sw_exit_info_1 = 2 and a reason in
sw_exit_info_2) or, when it cannot be answered at all, a termination of the guest
(KVM_EXIT_SYSTEM_EVENT): a guest can end itself, never crash hv.
"""

from __future__ import annotations

import struct

from hv.kvm import exits as K
from hv.kvm.cpuid import cpuid_lookup
from hv.kvm.ghcb import GHCB_ERR, GHCB_SIZE, Ghcb, MsrProto, SwExit, eventinj_exception
from hv.kvm import sev_snp
from hv.kvm.sev_snp import PSC_ENTRY_SIZE, PSC_HEADER_SIZE, PSC_MAX_ENTRIES

__all__ = ["EsExits"]

MSR_IA32_APIC_BASE = 0x1B
MSR_TSC_AUX = 0xC0000103
GP = 13
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_IOIO_IN, _IOIO_STR, _IOIO_REP = 1 << 0, 1 << 2, 1 << 3
HV_FT_SNP = 1  # GHCB_HV_FT_SNP: the hypervisor supports SEV-SNP guests
SNP_GUEST_VMM_ERR_INVALID_LEN = 1  # sw_exit_info_2 [63:32] of a guest request (Linux sev-guest)


class _Bad(Exception):
    """A GHCB request answered with sw_exit_info_1 = 2 and this reason."""

    def __init__(self, reason: int):
        self.reason = reason


class EsExits:
    """The VMGEXIT side of one vCPU. `vmgexit()` handles an exit 0x403; when it returns a KVM
    exit that user space must complete (I/O, MMIO, MSR, hypercall), `complete()` writes the
    result into the GHCB at the next run()."""

    def __init__(self, vm, control, tsc=None, string_io: bool = False):
        self.vm = vm
        self.control = control  # hv.hw.cpu.GuestControl: ghcb_msr lives there
        # The guest's TSC, for RDTSC/RDTSCP events (None: this hypervisor never intercepts them,
        # and they are answered as events it does not know)
        self.tsc = tsc
        # String I/O through sw_scratch as K.StringIo exits: for a VMM that handles them (the
        # kernel VMM); otherwise refused as invalid input
        self.string_io = string_io
        self.registered_gpa: int | None = None
        self.dr7 = 0x400  # the guest's DR7 as it reported it (its reads are answered from here)
        self.ap_jump_table = 0  # the AP jump table's GPA, as the BSP set it
        self._ghcb: Ghcb | None = None  # the request user space is completing
        self._scratch = 0  # offset of an MMIO request's data in the pending GHCB
        self.stats = {"msr_protocol": 0, "ghcb": 0, "bad_requests": 0, "psc": 0}
        # How often each request came: GHCB events by sw_exit_code ("0x7b"), MSR-protocol
        # requests by GHCBInfo ("msr:0x004").
        self.events: dict[str, int] = {}

    @property
    def busy(self) -> bool:
        return self._ghcb is not None

    # -- entry ----------------------------------------------------------------------------------
    def vmgexit(self) -> K.KvmExit | None:
        msr = self.control.ghcb_msr
        if msr & 0xFFF:
            self.stats["msr_protocol"] += 1
            return self._msr_protocol(msr)
        if msr == 0:
            return None  # nothing asked (KVM resumes the guest)
        return self._ghcb_request(msr)

    # -- the MSR protocol -----------------------------------------------------------------------
    def _msr_protocol(self, msr: int) -> K.KvmExit | None:
        info = msr & 0xFFF
        self._count(f"msr:{info:#05x}")
        if info == MsrProto.SEV_INFO_REQ:
            self.control.ghcb_msr = MsrProto.sev_info(self.vm.cbitpos)
        elif info == MsrProto.CPUID_REQ:
            reg, fn = (msr >> 30) & 3, msr >> 32
            value = cpuid_lookup(self.vm.cpuid, fn, 0)[reg]
            self.control.ghcb_msr = value << 32 | reg << 30 | MsrProto.CPUID_RESP
        elif info == MsrProto.REG_GPA_REQ:
            gfn = msr >> 12
            if self._in_guest_memory(gfn << 12):
                self.registered_gpa = gfn << 12
                self.control.ghcb_msr = gfn << 12 | MsrProto.REG_GPA_RESP
            else:  # all-ones GFN: the guest sees its GPA was not accepted
                self.control.ghcb_msr = (_MASK64 & ~0xFFF) | MsrProto.REG_GPA_RESP
        elif info == MsrProto.PSC_REQ and self.vm.type.snp:
            self.control.ghcb_msr = sev_snp.page_state_change_msr(self.vm, msr)
        elif info == MsrProto.HV_FEATURES_REQ:
            self.control.ghcb_msr = self._hv_features() << 12 | MsrProto.HV_FEATURES_RESP
        elif info == MsrProto.TERM_REQ:
            return K.SystemEvent(f"guest requested termination (GHCB MSR protocol): reason set "
                                 f"{(msr >> 12) & 0xF}, code {(msr >> 16) & 0xFF:#x}")
        # Any other request: the MSR is left as it is and the guest resumes (as KVM does).
        return None

    def _hv_features(self) -> int:
        """The GHCB hypervisor features (GHCB 2.0): bit 0, SEV-SNP, for an SNP VM (Linux
        refuses to run under SNP without it); no AP creation, no restricted injection."""
        return HV_FT_SNP if self.vm.type.snp else 0

    def _in_guest_memory(self, gpa: int) -> bool:
        return any(s.gpa <= gpa and gpa + GHCB_SIZE <= s.gpa + s.size for s in self.vm.slots.values())

    # -- GHCB requests --------------------------------------------------------------------------
    def _ghcb_request(self, gpa: int) -> K.KvmExit | None:
        if gpa % GHCB_SIZE or not self._in_guest_memory(gpa):
            return K.SystemEvent(f"guest terminated: its GHCB GPA {gpa:#x} is not a page of guest memory")
        if self.vm.type.snp and gpa != self.registered_gpa:
            # GHCB 2.0: an SNP guest must register its GHCB's GPA first (KVM refuses the exit)
            return K.SystemEvent(f"guest terminated: its GHCB at GPA {gpa:#x} was not registered "
                                 "(SEV-SNP guests register it through the GHCB MSR protocol)")
        if self.vm.type.snp and self.vm.kvm.machine.rmpread(self.vm.gpa_to_spa(gpa)).assigned:
            # A private GHCB (e.g. made private with a page-state change) cannot be answered:
            # the hypervisor's writes to it fail.
            return K.SystemEvent(f"guest terminated: its GHCB at GPA {gpa:#x} is not a shared page")
        self.stats["ghcb"] += 1
        ghcb = Ghcb(gpa, self.vm.read_gpa(gpa, GHCB_SIZE))
        try:
            out = self._dispatch(ghcb)
        except _Bad as bad:
            self.stats["bad_requests"] += 1
            ghcb.clear_valid()
            ghcb.answer(2, bad.reason)
            self._write(ghcb)
            return None
        if isinstance(out, K.SystemEvent):
            return out
        if out is None:
            self._write(ghcb)
            return None
        self._ghcb = ghcb
        return out

    def _dispatch(self, g: Ghcb) -> K.KvmExit | None:
        if g.usage != 0:
            raise _Bad(GHCB_ERR.INVALID_USAGE)
        if not MsrProto.PROTOCOL_MIN <= g.protocol_version <= MsrProto.PROTOCOL_MAX:
            raise _Bad(GHCB_ERR.INVALID_INPUT)
        code = g.get_valid("sw_exit_code")
        if code is None:
            raise _Bad(GHCB_ERR.MISSING_INPUT)
        self._count(f"{code:#x}")
        # Inputs are read once, then the bitmap is cleared: only outputs are valid on return.
        inputs = {n: g.get_valid(n) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "cpl", "xcr0",
                                                "sw_exit_info_1", "sw_exit_info_2", "sw_scratch")}
        g.clear_valid()
        g.answer(0, 0)
        if code == SwExit.CPUID:
            rax, rcx = _need(inputs, "rax", "rcx")
            a, b, c, d = cpuid_lookup(self.vm.cpuid, rax & 0xFFFFFFFF, rcx & 0xFFFFFFFF)
            for name, v in (("rax", a), ("rbx", b), ("rcx", c), ("rdx", d)):
                g.set(name, v)
            return None
        if code == SwExit.IOIO:
            (info,) = _need(inputs, "sw_exit_info_1")
            if info & _IOIO_REP and not info & _IOIO_STR:
                raise _Bad(GHCB_ERR.INVALID_INPUT)
            size = {1: 1, 2: 2, 4: 4}.get((info >> 4) & 7)
            if size is None:
                raise _Bad(GHCB_ERR.INVALID_INPUT)
            port = (info >> 16) & 0xFFFF
            if info & _IOIO_STR:
                return self._string_io(g, inputs, port, size, bool(info & _IOIO_IN))
            if info & _IOIO_IN:
                return K.Io(port, size, True)
            (rax,) = _need(inputs, "rax")
            return K.Io(port, size, False, rax & ((1 << (8 * size)) - 1))
        if code == SwExit.MSR:
            rcx, write = _need(inputs, "rcx", "sw_exit_info_1")
            msr = rcx & 0xFFFFFFFF
            if write not in (0, 1):
                raise _Bad(GHCB_ERR.INVALID_INPUT)
            if write:
                rax, rdx = _need(inputs, "rax", "rdx")
                return K.Wrmsr(msr, (rdx & 0xFFFFFFFF) << 32 | (rax & 0xFFFFFFFF))
            if msr == MSR_IA32_APIC_BASE:
                value = 0xFEE00900
            elif msr in self.vm.msrs:
                value = self.vm.msrs[msr]
            else:
                return K.Rdmsr(msr)
            g.set("rax", value & 0xFFFFFFFF)
            g.set("rdx", (value >> 32) & 0xFFFFFFFF)
            return None
        if code in (SwExit.RDTSC, SwExit.RDTSCP) and self.tsc is not None:
            t = self.tsc() & _MASK64
            g.set("rax", t & 0xFFFFFFFF)
            g.set("rdx", t >> 32)
            if code == SwExit.RDTSCP:
                g.set("rcx", self.vm.msrs.get(MSR_TSC_AUX, 0) & 0xFFFFFFFF)
            return None
        if code == SwExit.WBINVD:
            return None  # the caches write back at every hypervisor access already (hv.hw.memctl)
        if code == SwExit.DR7_WRITE:
            (rax,) = _need(inputs, "rax")
            self.dr7 = rax & 0xFFFFFFFF
            return None
        if code == SwExit.DR7_READ:
            g.set("rax", self.dr7)
            return None
        if code == SwExit.NMI_COMPLETE:
            return None  # no NMI is ever injected
        if code == SwExit.AP_JUMP_TABLE:
            (info1,) = _need(inputs, "sw_exit_info_1")
            if info1 == 0:
                self.ap_jump_table = inputs["sw_exit_info_2"] or 0
            elif info1 == 1:
                g.answer(0, self.ap_jump_table)
            else:
                raise _Bad(GHCB_ERR.INVALID_INPUT)
            return None
        if code == SwExit.VMMCALL:
            (rax,) = _need(inputs, "rax")
            args = tuple(inputs[n] or 0 for n in ("rbx", "rcx", "rdx", "rsi"))
            return K.Hypercall(rax, args)
        if code in (SwExit.MMIO_READ, SwExit.MMIO_WRITE):
            gpa, length = _need(inputs, "sw_exit_info_1", "sw_exit_info_2")
            if not 1 <= length <= 8:
                raise _Bad(GHCB_ERR.INVALID_INPUT)
            off = _scratch(g, inputs, length)
            if off is None:
                raise _Bad(GHCB_ERR.INVALID_SCRATCH_AREA)
            self._scratch = off
            if code == SwExit.MMIO_WRITE:
                return K.Mmio(gpa, length, True, int.from_bytes(g.page[off:off + length], "little"))
            return K.Mmio(gpa, length, False)
        if code == SwExit.SNP_PSC and self.vm.type.snp:
            self._snp_psc(g, inputs)
            return None
        if code == SwExit.HV_FEATURES:
            g.answer(0, self._hv_features())
            return None
        if code == SwExit.SNP_GUEST_REQUEST:
            self._snp_guest_request(g, *_need(inputs, "sw_exit_info_1", "sw_exit_info_2"))
            return None
        if code == SwExit.SNP_EXT_GUEST_REQUEST:
            req, resp, certs_gpa, npages = _need(inputs, "sw_exit_info_1", "sw_exit_info_2",
                                                 "rax", "rbx")
            self._snp_ext_guest_request(g, req, resp, certs_gpa, npages)
            return None
        if code == SwExit.TERMINATE:
            info = inputs["sw_exit_info_1"] or 0
            return K.SystemEvent(f"guest requested termination (GHCB): reason set {info & 0xF}, "
                                 f"code {(info >> 4) & 0xFF:#x}")
        if code == SwExit.UNSUPPORTED:
            return K.SystemEvent("guest terminated: it reported an event its #VC handler does not support "
                                 f"(exit code {inputs['sw_exit_info_1'] or 0:#x})")
        raise _Bad(GHCB_ERR.INVALID_EVENT)

    def _string_io(self, g: Ghcb, inputs: dict, port: int, size: int, is_in: bool) -> K.StringIo:
        """INS/OUTS (56421 section 4.1.2): sw_exit_info_2 accesses, whose data are at
        sw_scratch, in the GHCB's shared buffer (an OUT's to send, an IN's to fill)."""
        if not self.string_io:
            raise _Bad(GHCB_ERR.INVALID_INPUT)  # string I/O is not offered
        (count,) = _need(inputs, "sw_exit_info_2")
        if count < 1:
            raise _Bad(GHCB_ERR.INVALID_INPUT)
        off = _scratch(g, inputs, count * size)
        if off is None:
            raise _Bad(GHCB_ERR.INVALID_SCRATCH_AREA)
        self._scratch = off
        if is_in:
            return K.StringIo(port, size, True, count)
        return K.StringIo(port, size, False, count, bytes(g.page[off:off + count * size]))

    def _snp_guest_request(self, g: Ghcb, req_gpa: int, resp_gpa: int) -> None:
        """SNP guest request (0x80000011): the firmware's answer page goes to the guest's
        response page, its status to sw_exit_info_2 (upper half: hypervisor errors, none here).
        Both pages must be shared: the message is sealed with a VMPCK, not the memory key."""
        snp = self.vm.snp
        if snp is None or not snp.request_pages_shared(req_gpa, resp_gpa):
            raise _Bad(GHCB_ERR.INVALID_INPUT)
        status, page = snp.guest_request(self.vm.read_gpa(req_gpa, GHCB_SIZE))
        self.vm.write_gpa(resp_gpa, page)
        g.answer(0, status & 0xFFFFFFFF)
        return None

    def _snp_ext_guest_request(self, g: Ghcb, req_gpa: int, resp_gpa: int, certs_gpa: int,
                               npages: int) -> None:
        """SNP extended guest request (0x80000012): the host's certificate table (VCEK, ASK,
        ARK) into the guest's `npages` shared pages at `certs_gpa`, then the guest request.
        Too few pages: nothing is done; sw_exit_info_2 = INVALID_LEN << 32 and RBX = the pages
        needed (the GHCB specification's answer, which Linux's sev-guest retries on)."""
        snp = self.vm.snp
        if snp is None:
            raise _Bad(GHCB_ERR.INVALID_INPUT)
        certs = snp.certificates()
        needed = max(1, -(-len(certs) // GHCB_SIZE))
        if npages < needed:
            g.set("rbx", needed)
            g.answer(0, SNP_GUEST_VMM_ERR_INVALID_LEN << 32)
            return None
        if not snp.pages_shared(certs_gpa, needed):
            raise _Bad(GHCB_ERR.INVALID_INPUT)
        table = certs or bytes(24)  # no certificates: the terminator alone
        self.vm.write_gpa(certs_gpa, table.ljust(needed * GHCB_SIZE, b"\0"))
        return self._snp_guest_request(g, req_gpa, resp_gpa)

    def _snp_psc(self, g: Ghcb, inputs: dict) -> None:
        """SNP Page State Change (0x80000010): sw_scratch is the GPA of the PSC buffer, a header
        and entries 0..end_entry, which must lie in the GHCB's shared buffer (else a bad
        scratch area, as for MMIO). The result goes to sw_exit_info_2 (0 done; the PSC errors of
        hv.kvm.sev_snp.page_state_change), the progress into the buffer's header and entries."""
        off = _scratch(g, inputs, PSC_HEADER_SIZE)
        if off is None:
            raise _Bad(GHCB_ERR.INVALID_SCRATCH_AREA)
        end = struct.unpack_from("<H", g.page, off + 2)[0]
        size = PSC_HEADER_SIZE + PSC_ENTRY_SIZE * (end + 1)
        if end < PSC_MAX_ENTRIES and _scratch(g, inputs, size) is None:
            raise _Bad(GHCB_ERR.INVALID_SCRATCH_AREA)
        self.stats["psc"] += 1
        g.answer(0, sev_snp.page_state_change(self.vm, g.page, off, ghcb_gpa=g.gpa))
        return None

    def _count(self, key: str) -> None:
        self.events[key] = self.events.get(key, 0) + 1

    # -- completion -----------------------------------------------------------------------------
    def complete(self, p: K.KvmExit | None) -> None:
        """Write what user space filled into `p` into the pending GHCB, then forget it."""
        g, self._ghcb = self._ghcb, None
        if g is None:
            return
        if isinstance(p, K.Io) and p.is_in:
            g.set("rax", p.data & ((1 << (8 * p.size)) - 1))
        elif isinstance(p, K.StringIo) and p.is_in:
            n = p.count * p.size
            g.page[self._scratch:self._scratch + n] = p.buffer[:n].ljust(n, b"\xff")
        elif isinstance(p, K.Mmio) and not p.is_write:
            off = self._scratch
            g.page[off:off + p.size] = (p.data & ((1 << (8 * p.size)) - 1)).to_bytes(p.size, "little")
        elif isinstance(p, (K.Rdmsr, K.Wrmsr)):
            if p.error:
                g.answer(1, eventinj_exception(GP, 0))
            elif isinstance(p, K.Rdmsr):
                g.set("rax", p.data & 0xFFFFFFFF)
                g.set("rdx", (p.data >> 32) & 0xFFFFFFFF)
        elif isinstance(p, K.Hypercall):
            g.set("rax", p.ret & _MASK64)
        self._write(g)

    def _write(self, g: Ghcb) -> None:
        # The fields the hypervisor answers in: the save area through the bitmap, and the
        # shared buffer (MMIO read data); the protocol words at the end are the guest's.
        self.vm.write_gpa(g.gpa, bytes(g.page[:0xFF0]))


def _scratch(g: Ghcb, inputs: dict, length: int) -> int | None:
    """Offset in the GHCB of `length` bytes at the request's sw_scratch, when it was given and
    they lie in the shared buffer."""
    scratch = inputs["sw_scratch"]
    return None if scratch is None else g.scratch_range(length, scratch)


def _need(inputs: dict, *names: str) -> tuple[int, ...]:
    values = tuple(inputs[n] for n in names)
    if any(v is None for v in values):
        raise _Bad(GHCB_ERR.MISSING_INPUT)
    return values
