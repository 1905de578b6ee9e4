"""The VMM: builds a machine and a VM, loads (or launches) the guest, runs its vCPU, reports.

This is user space above hv.kvm: it sees guest memory only as the hypervisor does (through
memory slots, i.e. DRAM as stored), and for encrypted guests performs the SEV launch through the
PSP. Its parts, one concept each: the configuration and its checks (hv.vmm.config), the measured
launch and the guest owner's part in it (hv.vmm.launch, hv.vmm.snp_launch), and the run loop,
kvmtool's: one loop, one switch on the exit reason, devices by bus lookup (hv.vmm.runloop).

Secrets: a plain guest gets its secret written in; SEV and SEV-ES get it through LAUNCH_SECRET
after the owner checked LAUNCH_MEASURE; an SEV-SNP guest asks for it itself after attestation,
on port 0x502 (hv.vmm.secret_release), and the owner releases it to a key in the guest's report.
"""

from __future__ import annotations

import hashlib
import threading
import time

from hv import boot
from hv.hw.machine import Machine, MachineConfig
from hv.kvm import Kvm, Mode
from hv.kvm.sev import FirmwareError, SevGuest
from hv.kvm.sev_snp import SnpGuest
from hv.vmm.bus import Bus
from hv.vmm.config import LaunchError, VmmConfig, check_config, check_secret
from hv.vmm.devices import DebugExit, PostCode, Uart16550
from hv.vmm.launch import OwnerChannel, sev_launch, snp_launch_with_release
from hv.vmm.runloop import (EXIT_CRASH, EXIT_INTERRUPTED, EXIT_LAUNCH, EXIT_TIMEOUT, EXIT_USAGE,
                            RunResult, StopGuest, Watchdog, run_loop)
from hv.vmm.secret_release import PORT as SECRET_RELEASE_PORT, SecretRelease
from hv.vmm.snp_launch import snp_prepare, snp_reclaim

__all__ = [
    "EXIT_CRASH", "EXIT_INTERRUPTED", "EXIT_LAUNCH", "EXIT_TIMEOUT", "EXIT_USAGE", "LaunchError",
    "RunResult", "StopGuest",
    "Vmm", "VmmConfig",
]


class Vmm:
    """One guest on one machine. Construct, then `run()`; `vm`, `vcpu`, `kvm` stay inspectable."""

    def __init__(self, config: VmmConfig, machine: Machine | None = None):
        self.config = config
        self.loaded = boot.parse_image(config.image, config.mem_size)  # ImageError on bad images
        self.machine = machine or Machine(MachineConfig(
            dram_size=config.mem_size + (8 << 20), tweak=config.tweak, tsme=config.tsme,
            psp_state=config.psp_state))
        self.kvm = Kvm(self.machine)
        self._snp_dev = None
        self._owner = OwnerChannel(config)
        check_config(config)
        if config.vm_type == Mode.SEV_SNP:
            try:  # SNP_INIT: the RMP must be on before an SNP vCPU exists
                self._snp_dev = snp_prepare(self.kvm)
            except FirmwareError as e:
                raise LaunchError(str(e)) from e
        self.vm = self.kvm.create_vm(config.vm_type, config.cbitpos)
        self.vm.set_user_memory_region(0, 0, config.mem_size)
        self.vcpu = self.vm.create_vcpu()
        if config.max_insns is not None:
            self.vcpu.enable_counting(config.max_insns)
        self.uart = Uart16550(self._serial_out)
        self.debug_exit = DebugExit()
        self.post = PostCode()
        self.pio = Bus("port I/O")
        self.pio.register(0x3F8, 8, self.uart)
        self.pio.register(0x501, 1, self.debug_exit)
        self.pio.register(0x80, 1, self.post)
        self.secret_release: SecretRelease | None = None
        if config.vm_type == Mode.SEV_SNP and (config.secret is not None or config.owner_exec):
            self.secret_release = SecretRelease(
                self.vm, config.mem_size,
                lambda report: self._owner.release(report, self.vm, self.sev), self._record_release)
            self.pio.register(SECRET_RELEASE_PORT, 1, self.secret_release)
        self.mmio = Bus("MMIO")
        self.launch_info: dict | None = None
        self.sev: SevGuest | SnpGuest | None = None
        self.running = False  # run() is executing the guest (between load and the report)
        self._interrupted = threading.Event()
        self._watchdog: Watchdog | None = None

    def interrupt(self) -> None:
        """Stop the guest from any thread (hv run's Ctrl-C): run() returns "interrupted" with
        status 130 as soon as the vCPU leaves the guest, or at once if it has not entered it.
        The stop is asynchronous and may restart the current instruction: fine for ending a run,
        not for resuming one."""
        self._interrupted.set()
        self.vcpu.kick()
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.interrupt()

    @property
    def serial(self) -> bytes:
        """The guest's console output: its last SERIAL_TAIL bytes (hv.vmm.devices)."""
        return self.uart.transmitted

    def _serial_out(self, b: bytes) -> None:
        if self.config.serial_out is not None:
            self.config.serial_out(b)

    # -- loading -----------------------------------------------------------------------------------------
    def load(self, snp_pages=None) -> None:
        """Put the guest in memory: directly (plain) or through the measured SEV launch.
        `snp_pages` (SEV-SNP only) rewrites the launched pages: see snp_launch."""
        cfg = self.config
        self._owner.restart_clock()
        flags = 0
        if not self.vm.encrypted:
            for gpa, data in boot.boot_page_tables(cfg.mem_size, None):
                self.vm.write_gpa(gpa, data)
            for gpa, data in boot.image_regions(cfg.image, cfg.mem_size):
                self.vm.write_gpa(gpa, data)
            secret_len = 0
            if cfg.secret is not None:
                # Nothing protects a plain guest: the VMM simply writes the secret in.
                check_secret(cfg.secret)
                self.vm.write_gpa(boot.SECRET_GPA, cfg.secret)
                secret_len = len(cfg.secret)
        elif self.vm.type.snp:
            flags |= snp_launch_with_release(self, self._snp_dev, snp_pages, self._owner)
            secret_len = 0
        else:
            secret_len = sev_launch(self, self._owner)
        self.vm.write_gpa(boot.BOOT_INFO_GPA, boot.boot_info(cfg.mem_size, secret_len, flags))
        if self.vcpu.guest_state_protected:
            return  # SEV-ES: the entry state is the measured VMSA (hv.boot.initial_vmsa)
        self.vcpu.set_regs({"rip": self.loaded.entry, "rsp": boot.BOOT_STACK_TOP,
                            "rsi": boot.BOOT_INFO_GPA, "rflags": 0x2})
        self.vcpu.set_sregs({"cr3": boot.PAGE_TABLES_GPA})

    # -- SEV-SNP secret release (port 0x502) -------------------------------------------------------------
    def _record_release(self, outcome: dict) -> None:
        if self.launch_info is None or "secret_release" not in self.launch_info:
            return
        info = self.launch_info["secret_release"]
        info["requests"] = self.secret_release.requests
        info["outcomes"] = self.secret_release.outcomes
        if outcome["status"] == 0:
            info["released"] = True

    # -- running -----------------------------------------------------------------------------------------
    def run(self, load: bool = True) -> RunResult:
        """Load the guest (unless already loaded with `load()`), then run until it exits,
        crashes or runs out of time or budget."""
        t0 = time.perf_counter()
        if load:
            self.load()
        cfg = self.config
        self._owner.restart_clock()
        self._watchdog = watchdog = Watchdog(self.vcpu, cfg.timeout)
        if self._interrupted.is_set():  # interrupt() came before the watchdog existed
            watchdog.interrupt()
        self.running = True
        try:
            reason, code, guest_code, message = run_loop(self, watchdog, self._interrupted)
        finally:
            self.running = False
            watchdog.cancel()
            self._watchdog = None
        stats = self.machine.stats()
        return RunResult(
            exit_reason=reason, exit_code=code, guest_exit_code=guest_code,
            serial=self.serial.decode("utf-8", "replace"), serial_dropped=self.uart.dropped,
            exits=dict(self.vcpu.exit_counts),
            tlb_fills=self.vcpu.stats["tlb_fills"], pages_encrypted=stats["pages_encrypted"],
            pages_decrypted=stats["pages_decrypted"], instructions=self.vcpu.instructions,
            wall_time=time.perf_counter() - t0, message=message, launch=self.launch_info)

    # -- what the hypervisor sees ------------------------------------------------------------------------
    def dump_guest_memory(self) -> bytes:
        """Guest memory in GPA order as the hypervisor reads it (ciphertext for private pages)."""
        return self.vm.read_gpa(0, self.config.mem_size)

    def physical_access(self):
        """What a physical attacker at this host reaches (DMA, the DRAM cells; hv.hw.grants): a
        separate grant from the hypervisor's, asked for explicitly (the attack lab's A02, A03)."""
        return self.machine.physical_access()

    def close(self) -> None:
        if isinstance(self.sev, SnpGuest):
            snp_reclaim(self.vm, self.sev)
        elif self.sev is not None:
            self.sev.decommission()
        self.vm.destroy()


def secret_sha256(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()
