"""The VMM for a Linux kernel: a PC platform (hv.vmm.pc) around an operating-system vCPU.

One thread runs the guest. Time is the host's monotonic clock from power-on; the TSC counts it
at TSC_KHZ, which hv tells the kernel (tsc_early_khz), so the TSC, the PIT and the ACPI PM timer
agree. A second thread only wakes the guest: at the platform's next timer deadline it asks the
vCPU to stop at its next clean point (hv.hw.oscpu), where the run loop lets the devices catch up
and delivers the interrupt the PIC then has, if the guest takes interrupts; otherwise it looks
again shortly. A HLT with interrupts enabled is idle: the loop sleeps until the next deadline or
terminal input. The command line hv adds (PLATFORM_CMDLINE) comes before the user's --append, so
the user's options win where the kernel lets the last one win.

Ends: ACPI S5 (`poweroff -f`) is status 0; a reset (a reboot request, or a panic, which
`panic=-1` turns into an immediate reboot) ends the run: status 1 for a reboot, 4 for a panic
(the console shows "Kernel panic" since the kernel started); a HLT with interrupts disabled (the
end of `halt -f`) is status 0 with reason "halted"; a triple fault 125.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from unicorn import x86_const as X

from hv.boot import kernel_launch_digest, kernel_launch_vmsa, kernel_snp_launch_pages
from hv.boot.linux import (BOOT_CS, BOOT_DS, KERNEL_CBITPOS, PLATFORM_CMDLINE, TSC_KHZ, LinuxBoot,
                           kernel_launch_regions, kernel_plan)
from hv.hw.cpuid import EPYC
from hv.hw.machine import Machine, MachineConfig
from hv.hw.oscpu import OsBudget, OsHalt, OsInterrupted, OsShutdown, OsVmgexit
from hv.kvm import exits as K
from hv.kvm.ghcb import MsrProto
from hv.kvm.cpuid import snp_cpuid_page
from hv.kvm.kvm import Kvm, KvmError
from hv.kvm.mode import Mode
from hv.kvm.sev import FirmwareError
from hv.kvm.sev_es import EsExits
from hv.vmm.bus import Bus
from hv.vmm.config import LaunchError
from hv.vmm.launch import OwnerChannel, sev_launch
from hv.vmm.linux_debug import KernelVcpuView
from hv.vmm.pc import PcPlatform
from hv.vmm.snp_launch import snp_launch, snp_prepare
from hv.vmm.vmm import EXIT_CRASH, EXIT_INTERRUPTED, EXIT_TIMEOUT, RunResult

__all__ = ["EXIT_PANIC", "EXIT_REBOOT", "KernelConfig", "KernelVmm", "PLATFORM_CMDLINE", "TSC_KHZ"]

EXIT_REBOOT = 1
_MSR_TSC, _MSR_HWCR = 0x10, 0xC0010015
EXIT_PANIC = 4
_PANIC_TEXT = b"Kernel panic - not syncing"
_POLL_NS = 500_000  # how soon to look again when an interrupt waits for IF
_ESCAPE = b"\x01x"  # Ctrl-A x ends an interactive run, as in QEMU's -nographic console
# The part a kernel runs on: its core's MMU implements 40 physical address bits, so the C-bit is
# bit 39 (hv.boot.linux.KERNEL_CBITPOS), which is what the PSP checks a CPUID page against.
KERNEL_PART = dataclasses.replace(EPYC, cbitpos=KERNEL_CBITPOS, phys_bits=40)


@dataclass
class KernelConfig:
    kernel: bytes
    initrd: bytes | None = None
    append: str = ""
    mem_size: int = 256 << 20
    timeout: float | None = None
    max_insns: int | None = None
    serial_out: Callable[[bytes], None] | None = None
    input_fd: int | None = None  # terminal input for the UART's receive side (None: no input)
    kernel_name: str = "bzImage"
    extra: dict = field(default_factory=dict)
    mode: Mode = Mode.PLAIN
    # The measured launch of an encrypted kernel, as for images (hv.vmm.launch): the launch
    # policy, the owner's session files or command. A kernel has no secret area to inject into.
    policy: int | None = None
    session_dir: str | None = None
    owner_exec: str | None = None
    secret: bytes | None = None
    psp_state: str | os.PathLike | None = None

    @property
    def cmdline(self) -> str:
        return f"{PLATFORM_CMDLINE} {self.append}".strip()


def _guest_cpuid(table: dict) -> dict:
    """The VM's CPUID table for this platform: no local APIC (the 8259 pair is the interrupt
    controller), no MONITOR/MWAITX (the core does not implement them) or IBS, and an invariant TSC (it counts wall time at TSC_KHZ whatever the guest does)."""
    t = dict(table)
    a, b, c, d = t.get((1, 0), (0, 0, 0, 0))
    # x2APIC, MONITOR, APIC; OSXSAVE reads 0 here (Linux leaves CR4.OSXSAVE clear: no XSAVE
    # state components are offered), and the core mirrors CR4 where it answers CPUID itself.
    t[(1, 0)] = (a, b, c & ~(1 << 21) & ~(1 << 3) & ~(1 << 27), d & ~(1 << 9))
    # XSAVEC in leaf 0xD subleaf 1, as every SNP-capable part has it: an SNP kernel answers
    # that subleaf from the CPUID page and refuses one without XSAVEC or XSAVES (it would not
    # know the compacted size), ending its boot. No state component is offered (subleaf 0 is
    # zeros), so the kernel keeps FXSAVE in every mode.
    t[(0xD, 1)] = (1 << 1, 0, 0, 0)
    a, b, c, d = t.get((0x80000001, 0), (0, 0, 0, 0))
    # MWAITX is not in the emulated core; IBS (instruction-based sampling) has no interrupt
    # offset to give (the kernel reported that as a firmware bug).
    t[(0x80000001, 0)] = (a, b, c & ~(1 << 29) & ~(1 << 10), d)
    t[(0x80000007, 0)] = (0, 0, 0, 1 << 8)
    # 40 physical address bits: what the core's MMU implements (an encrypted guest's C-bit is
    # bit 39, hv.hw.osmem), 48 virtual.
    a, b, c, d = t.get((0x80000008, 0), (0, 0, 0, 0))
    t[(0x80000008, 0)] = (0x3028, b, c, d)
    max_ext = max(leaf for leaf, _sub in t if leaf >= 0x80000000)
    t[(0x80000000, 0)] = (max_ext,) + t.get((0x80000000, 0), (0, 0, 0, 0))[1:]
    return t


class _Waker:
    """Asks the vCPU to stop at a deadline (ns of guest time); repeats until re-armed, so a
    request that raced with the start of a run is not lost."""

    def __init__(self, clock_ns: Callable[[], int], stop: Callable[[], None]):
        self._clock, self._stop = clock_ns, stop
        self._at: int | None = None
        self._cond = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="hv-timer", daemon=True)
        self._thread.start()

    def arm(self, at_ns: int | None) -> None:
        if at_ns == self._at:
            return  # already armed so (the run loop re-arms after every exit)
        with self._cond:
            earlier = at_ns is not None and (self._at is None or at_ns < self._at)
            self._at = at_ns
            if earlier:  # a later deadline is seen when the thread wakes for the earlier one
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._done:
                if self._at is None:
                    self._cond.wait()
                    continue
                delay = (self._at - self._clock()) / 1e9
                if delay > 0:
                    self._cond.wait(min(delay, 0.05))
                    continue
                self._stop()
                self._cond.wait(0.001)


class KernelVmm:
    """One Linux guest: construct (the files are checked here: BzImageError), then run()."""

    def __init__(self, config: KernelConfig):
        self.config = config
        self._t0 = time.monotonic_ns()
        self.events: list[str] = []
        self.platform = PcPlatform(self, self._serial_out, self.events.append,
                                   on_input=self._on_input)
        encrypted = config.mode.encrypted
        self.plan: LinuxBoot = kernel_plan(config.kernel, config.initrd, config.append,
                                           config.mem_size, encrypted=encrypted,
                                           snp=config.mode.snp)
        self.machine = Machine(MachineConfig(dram_size=config.mem_size + (8 << 20),
                                             psp_state=config.psp_state, model=KERNEL_PART))
        self.kvm = Kvm(self.machine)
        # SEV-SNP: SNP_INIT before the VM exists (its core checks pages against the RMP)
        self._snp_dev = snp_prepare(self.kvm) if config.mode.snp else None
        self.vm = self.kvm.create_vm(config.mode, cbitpos=KERNEL_CBITPOS if encrypted else None)
        self.vm.set_user_memory_region(0, 0, config.mem_size)
        self.vm.cpuid = _guest_cpuid(self.vm.cpuid)
        self.sev = None
        self.launch_info: dict = {}
        # HWCR.TscFreqSel: the TSC counts at the P0 frequency (asked through the GHCB under
        # SEV-ES; the other modes read the core's own MSR).
        self.vm.msrs.setdefault(_MSR_HWCR, 1 << 24)
        self.pio = Bus("port I/O")
        self.platform.attach(self.pio)
        self.cpu = self.vm.create_os_vcpu(self._pio_in, self._pio_out, self._tsc)
        self.es = (EsExits(self.vm, self.cpu, tsc=self._tsc, string_io=True) if config.mode.es
                   else None)
        if self.es is not None:
            self.cpu.ghcb_msr = MsrProto.sev_info(self.vm.cbitpos)  # as KVM starts an SEV-ES vCPU
        if config.max_insns is not None:
            self.cpu.enable_counting(config.max_insns)
        self.vcpu = KernelVcpuView(self.cpu)  # what the GDB stub and the debug view use
        # Called with (vmm, exit) when the guest stopped for a reason other than its devices
        # (a debugger's stop request): the GDB stub serves its debugger there.
        self.debug_hook: Callable[["KernelVmm", object], None] | None = None
        # Called with the VMM after every exit of the run loop, before the loop handles it: what a
        # hypervisor can look at while the guest is stopped there (hv.attacks.a04_registers).
        self.exit_hook: Callable[["KernelVmm"], None] | None = None
        self._idle = threading.Event()
        self._interrupted = threading.Event()
        self._timed_out = False
        self._input_thread: threading.Thread | None = None
        self._escape = b""
        self._console_start = 0

    # -- time and devices -----------------------------------------------------------------------------
    def now_ns(self) -> int:
        return time.monotonic_ns() - self._t0

    def _tsc(self) -> int:
        return self.now_ns() * TSC_KHZ // 1_000_000

    def _serial_out(self, data: bytes) -> None:
        if self.config.serial_out is not None:
            self.config.serial_out(data)

    def _pio_in(self, port: int, size: int) -> int:
        value = self.pio.read(port, size)
        if self.platform.has_interrupt():
            self.cpu.request_stop()
        return value

    def _pio_out(self, port: int, size: int, value: int) -> bool:
        self.pio.write(port, size, value)
        if self.events:
            return True
        if self.platform.has_interrupt() or self.platform.next_deadline_ns() == 0:
            self.cpu.request_stop()
        return False

    def _on_input(self) -> None:
        self._idle.set()
        self.cpu.request_stop()

    def _read_input(self, fd: int) -> None:
        while not self._interrupted.is_set():
            try:
                data = os.read(fd, 256)
            except OSError:
                return
            if not data:
                return
            if _ESCAPE[0] in data or self._escape:
                seq = self._escape + data
                if _ESCAPE in seq:
                    self.interrupt()
                    return
                self._escape = seq[-1:] if seq.endswith(_ESCAPE[:1]) else b""
            self.platform.feed_input(data)

    # -- running ----------------------------------------------------------------------------------------
    def load(self) -> None:
        if self.config.mode.snp:
            # The SNP launch (hv.vmm.snp_launch) of the plan's pages, the secrets and CPUID
            # pages and the VMSA; every other page is the guest's, not validated: the stub the
            # VMSA starts in validates them all before it enters the kernel.
            pages = kernel_snp_launch_pages(self.plan, snp_cpuid_page(self.vm.cpuid))
            try:
                self.sev = snp_launch(self, self._snp_dev, pages=pages, keep_shared=())
            except FirmwareError as e:
                raise LaunchError(str(e)) from e
        elif self.config.mode.encrypted:
            # The measured launch (hv.vmm.launch): every piece of the plan goes through
            # LAUNCH_UPDATE_DATA in order, and the owner checks the measurement.
            es = self.config.mode is Mode.SEV_ES
            sev_launch(self, OwnerChannel(self.config),
                       (kernel_launch_regions(self.plan), kernel_launch_digest(self.plan, es=es),
                        [kernel_launch_vmsa(self.plan)] if es else []))
        else:
            for gpa, data in self.plan.writes:
                self.vm.write_gpa(gpa, data)
        cpu = self.cpu
        cpu.enter_long_mode(self.plan.gdtr, self.plan.cr3, BOOT_CS, BOOT_DS)
        cpu.set_reg(X.UC_X86_REG_RSI, self.plan.boot_params)
        cpu.set_reg(X.UC_X86_REG_RIP, self.plan.start)

    def interrupt(self) -> None:
        """Thread-safe: stop the guest for good (Ctrl-C, the escape sequence)."""
        self._interrupted.set()
        self._idle.set()
        self.cpu.kick()

    def _timeout(self) -> None:
        self._timed_out = True
        self.interrupt()

    def run(self, load: bool = True) -> RunResult:
        cfg = self.config
        t0 = time.perf_counter()
        if load:
            self.load()
        self.vcpu.running_on(threading.current_thread())
        waker = _Waker(self.now_ns, self.cpu.request_stop)
        watchdog = threading.Timer(cfg.timeout, self._timeout) if cfg.timeout else None
        if watchdog is not None:
            watchdog.daemon = True
            watchdog.start()
        if cfg.input_fd is not None:
            self._input_thread = threading.Thread(target=self._read_input, args=(cfg.input_fd,),
                                                  name="hv-input", daemon=True)
            self._input_thread.start()
        try:
            reason, code, message = self._loop(waker)
        finally:
            waker.close()
            if watchdog is not None:
                watchdog.cancel()
        uart = self.platform.uart
        stats = self.cpu.stats
        crypt = self.cpu.memory_stats()
        return RunResult(
            exit_reason=reason, exit_code=code, guest_exit_code=None,
            serial=uart.transmitted.decode("utf-8", "replace"), serial_dropped=uart.dropped,
            exits={"io": stats["io"] + (self.es.events.get("0x7b", 0) if self.es else 0),
                   "hlt": stats["halts"]},
            tlb_fills=None, pages_encrypted=crypt["pages_encrypted"],
            pages_decrypted=crypt["pages_decrypted"], instructions=self.cpu.instructions,
            wall_time=time.perf_counter() - t0, message=message,
            launch={"kernel": cfg.kernel_name, "kernel_release": self.plan.image.release,
                    "cmdline": cfg.cmdline, "platform_cmdline": PLATFORM_CMDLINE,
                    "mem_size": cfg.mem_size, "initrd_gpa": self.plan.initrd_gpa,
                    "interrupts_injected": stats["interrupts"],
                    # what happens inside an SEV-ES guest never reaches the hypervisor: null
                    **{k: None if self.es else stats[k] for k in ("exceptions", "page_faults",
                                                                   "syscalls")},
                    "mode": cfg.mode.value, **self.launch_info,
                    **({"vc": stats["vc"], "vmgexits": stats["vmgexits"],
                        "ghcb_events": dict(sorted(self.es.events.items()))} if self.es else {}),
                    **({"rmp": self._rmp_census()} if cfg.mode.snp else {})})

    def _rmp_census(self) -> dict[str, int]:
        """The RMP's entries of guest memory at the end (RMPREAD): the pages the guest holds
        (validated: all of them, the stub's work, less those it gave back) and those it turned
        over to the hypervisor with page-state changes (its GHCBs, bounce buffers, ...)."""
        slot = self.vm.slots[0]
        return self.machine.rmp_census(slot.spa, slot.size)

    def _vmgexit(self) -> str | None:
        """Answer an SEV-ES guest's VMGEXIT (hv.kvm.sev_es): port I/O goes to the platform,
        MSRs to the VM's table; a termination request ends the run with its reason."""
        assert self.es is not None
        k = self.es.vmgexit()
        if isinstance(k, K.SystemEvent):
            return k.detail
        if isinstance(k, K.Io):
            if k.is_in:
                k.data = self._pio_in(k.port, k.size)
            else:
                self._pio_out(k.port, k.size, k.data)
        elif isinstance(k, K.StringIo):
            n = k.size
            if k.is_in:
                k.buffer = b"".join(self._pio_in(k.port, n).to_bytes(n, "little")
                                    for _ in range(k.count))
            else:
                for i in range(k.count):
                    self._pio_out(k.port, n, int.from_bytes(k.buffer[i * n:(i + 1) * n], "little"))
        elif isinstance(k, K.Rdmsr):
            k.data = self._tsc() if k.index == _MSR_TSC else self.vm.msrs.get(k.index, 0)
        elif isinstance(k, K.Wrmsr):
            self.vm.msrs[k.index] = k.data
        elif isinstance(k, K.Mmio) and not k.is_write:
            k.data = (1 << (8 * k.size)) - 1  # nothing is mapped there: the bus floats
        elif isinstance(k, K.Hypercall):
            k.ret = K.KVM_ENOSYS
        if k is not None:
            self.es.complete(k)
        return None

    def _loop(self, waker: _Waker) -> tuple[str, int, str]:
        cpu, plat = self.cpu, self.platform
        while True:
            exit_ = cpu.run()
            if self.exit_hook is not None:
                self.exit_hook(self)
            if isinstance(exit_, OsVmgexit):
                ended = self._vmgexit()
                if ended is not None:
                    return "terminated", EXIT_CRASH, f"guest stopped: {ended}"
            plat.update(self.now_ns())
            if self.events:
                return self._event(self.events[0])
            if isinstance(exit_, OsBudget):
                return ("budget", EXIT_TIMEOUT,
                        f"guest stopped: instruction budget of {exit_.instructions} exhausted (--max-insns)")
            if isinstance(exit_, OsShutdown):
                return "shutdown", EXIT_CRASH, f"guest stopped: {exit_.reason}"
            if isinstance(exit_, OsInterrupted) and self._interrupted.is_set():
                if self._timed_out:
                    return ("timeout", EXIT_TIMEOUT,
                            f"guest stopped: still running after the {self.config.timeout:g} s timeout")
                return "interrupted", EXIT_INTERRUPTED, "guest stopped: interrupted"
            if isinstance(exit_, OsInterrupted) and self.debug_hook is not None:
                self.debug_hook(self, K.Intr("debugger"))
            if isinstance(exit_, OsHalt) and not plat.has_interrupt():
                if not exit_.interrupts_enabled:
                    return "halted", 0, ""
                deadline = plat.next_deadline_ns()
                self._idle.clear()
                if not plat.has_interrupt():
                    wait = None if deadline is None else max(0, deadline - self.now_ns()) / 1e9
                    self._idle.wait(wait)
                plat.update(self.now_ns())
                if self.events:
                    return self._event(self.events[0])
            if plat.has_interrupt():
                if cpu.interrupts_enabled():
                    if not cpu.inject_interrupt(plat.acknowledge()):
                        return "shutdown", EXIT_CRASH, "guest stopped: triple fault delivering an interrupt"
                if plat.has_interrupt():
                    waker.arm(self.now_ns() + _POLL_NS)
                    continue
            waker.arm(plat.next_deadline_ns())

    def _event(self, event: str) -> tuple[str, int, str]:
        if event == "poweroff":
            return "poweroff", 0, ""
        console = self.platform.uart.transmitted
        if _PANIC_TEXT in console:
            return "panic", EXIT_PANIC, "guest stopped: kernel panic (see the console)"
        return "reboot", EXIT_REBOOT, "guest stopped: it asked for a reboot (hv does not restart it)"

    def cr3(self) -> int:
        """The guest's page-table root (its CR3) as the run left it; an SEV-ES guest's is in its
        encrypted save area (KvmError)."""
        if self.config.mode.es:
            raise KvmError("an SEV-ES guest's CR3 is in its encrypted save area")
        return self.cpu.reg(X.UC_X86_REG_CR3)

    def dump_guest_memory(self) -> bytes:
        return self.vm.read_gpa(0, self.config.mem_size)

    def physical_access(self):
        """The physical attacker's grant on this machine (DMA, the DRAM cells)."""
        return self.machine.physical_access()

    def close(self) -> None:
        """Decommission an encrypted guest's launch context and free its ASID."""
        self.cpu.close()  # DRAM current and the core's memory released while the key exists
        if self.sev is not None:
            self.sev.decommission()
            self.sev = None
        self.vm.destroy()
