"""The VMM: builds a machine and a VM, loads (or launches) the guest, runs its vCPU, reports.

This is user space above hv.kvm: it sees guest memory only as the hypervisor does (through
memory slots, i.e. DRAM as stored), and for encrypted guests performs the SEV launch through the
PSP. The run loop is kvmtool's: one loop, one switch on the exit reason, devices by bus lookup.

Secrets: a plain guest gets its secret written in; SEV and SEV-ES get it through LAUNCH_SECRET
after the owner checked LAUNCH_MEASURE; an SEV-SNP guest asks for it itself after attestation,
on port 0x502 (hv.vmm.secret_release), and the owner releases it to a key in the guest's report.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from sevwire import ID_AUTH_SIZE, ID_BLOCK_SIZE

from hv import boot
from hv.hw.machine import TweakMode
from hv.hw.machine import Machine, MachineConfig
from hv.kvm import Kvm, MemoryFault, Mode, exits as K
from hv.kvm.sev import FirmwareError, SevDevice, SevGuest
from hv.kvm.sev_snp import SnpGuest
from hv.vmm.bus import Bus
from hv.vmm.devices import DebugExit, PostCode, Uart16550
from hv.vmm.owner_exec import OwnerExecError, run_owner
from hv.vmm.report import crash_report
from hv.vmm.secret_release import PORT as SECRET_RELEASE_PORT, SecretRelease
from hv.vmm.snp_launch import snp_launch, snp_prepare, snp_reclaim

__all__ = [
    "EXIT_CRASH", "EXIT_INTERRUPTED", "EXIT_LAUNCH", "EXIT_TIMEOUT", "EXIT_USAGE", "LaunchError",
    "RunResult", "StopGuest",
    "Vmm", "VmmConfig",
]

EXIT_USAGE = 2
EXIT_LAUNCH = 3
EXIT_TIMEOUT = 124
EXIT_CRASH = 125
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C

DEFAULT_POLICY = 0x1  # NODBG: the guest owner must opt in to debugging


class LaunchError(Exception):
    """The measured launch did not complete (firmware error or the owner refused)."""


class StopGuest(Exception):
    """Raised by an exit hook to end the run cleanly: `reason` and `exit_code` go into the
    RunResult, the text into its message (hv.vmm.migrate: the guest was sent away)."""

    def __init__(self, reason: str, exit_code: int, message: str):
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code


@dataclass
class VmmConfig:
    image: bytes
    mem_size: int = 64 << 20
    vm_type: Mode | str = Mode.PLAIN
    policy: int | None = None
    cbitpos: int | None = None
    tweak: TweakMode = TweakMode.XEX_RANDOM
    tsme: bool = False
    max_insns: int | None = None
    timeout: float | None = None
    secret: bytes | None = None          # SEV-SNP: released after attestation (port 0x502)
    session_dir: str | None = None       # owner's launch_blob.bin + godh.cert (not SEV-SNP)
    owner_exec: str | None = None        # command answering the measurement (SEV-SNP: the report)
    id_block: bytes | None = None        # SEV-SNP: the owner's ID block and ID authentication
    id_auth: bytes | None = None         # structure, checked at SNP_LAUNCH_FINISH
    psp_state: str | None = None
    serial_out: Callable[[bytes], None] | None = None
    image_name: str = "guest"
    # Called with (vmm, exit) at every exit before the VMM handles it: the seam where a
    # malicious hypervisor (the attack lab) or a tracer looks at and changes what it may.
    # Returning True means "handled": the VMM resumes the guest without looking at the exit.
    on_exit: Callable[["Vmm", object], None] | None = None


@dataclass
class RunResult:
    exit_reason: str  # "exit", "hlt", "timeout", "budget", "interrupted", "shutdown", "terminated", "crash"
    exit_code: int              # hv's process status
    guest_exit_code: int | None
    serial: str                 # the last SERIAL_TAIL bytes of the console (all went to serial_out)
    exits: dict[str, int]
    tlb_fills: int
    pages_encrypted: int
    pages_decrypted: int
    instructions: int | None
    wall_time: float
    message: str = ""
    launch: dict | None = None
    io_exits: dict[str, int] = field(default_factory=dict)
    serial_dropped: int = 0     # console bytes older than the tail in `serial`

    def to_json(self) -> dict:
        out = {
            "exit_reason": self.exit_reason,
            "exit_code": self.exit_code,
            "guest_exit_code": self.guest_exit_code,
            "serial": self.serial,
            "serial_dropped": self.serial_dropped,
            "exits": self.exits,
            "tlb_fills": self.tlb_fills,
            "pages_encrypted": self.pages_encrypted,
            "pages_decrypted": self.pages_decrypted,
            "instructions": self.instructions,
            "wall_time": round(self.wall_time, 6),
        }
        if self.message:
            out["message"] = self.message
        if self.launch is not None:
            out["launch"] = self.launch
        return out


class _Watchdog:
    """Kicks the vCPU out of the guest when the wall-clock budget is spent or when interrupt()
    asks (KVM: a signal). It kicks again until cancelled: a kick that lands just before the vCPU
    enters the guest is lost (an emu_stop before emu_start)."""

    def __init__(self, vcpu, seconds: float | None):
        self.fired = False  # the budget was spent
        self._vcpu = vcpu
        self._wake = threading.Event()  # interrupt() or cancel()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(seconds,), daemon=True)
        self._thread.start()

    def _run(self, seconds: float | None) -> None:
        woken = self._wake.wait(seconds)
        if self._done.is_set():
            return
        self.fired = not woken
        self._vcpu.kick()
        while not self._done.wait(0.02):
            self._vcpu.kick()

    def interrupt(self) -> None:
        self._wake.set()

    def cancel(self) -> None:
        self._done.set()
        self._wake.set()


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
        self._release_certs: dict[str, bytes] | None = None
        self._release_expected: bytes | None = None
        self._owner_clock = time.monotonic()  # what --owner-exec's share of --timeout counts from
        if (config.id_block is None) != (config.id_auth is None):
            raise LaunchError("an ID block and its ID authentication structure go together")
        if config.id_block is not None:
            if config.vm_type != Mode.SEV_SNP:
                raise LaunchError("an ID block is for SEV-SNP launches")
            if len(config.id_block) != ID_BLOCK_SIZE or len(config.id_auth) != ID_AUTH_SIZE:
                raise LaunchError(f"the ID block is {ID_BLOCK_SIZE} bytes and the ID "
                                  f"authentication structure {ID_AUTH_SIZE}")
        if config.vm_type == Mode.SEV_SNP:
            if config.session_dir is not None:
                raise LaunchError("--session is for SEV and SEV-ES launches: SEV-SNP has no launch "
                                  "session blob (the owner releases the secret after attestation)")
            if config.secret is not None and config.owner_exec:
                raise LaunchError("under SEV-SNP give --secret-file (hv plays the owner) or "
                                  "--owner-exec, not both")
            if config.secret is not None:
                self._check_release_secret(config.secret)
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
            self.secret_release = SecretRelease(self.vm, config.mem_size, self._release_owner,
                                                self._record_release)
            self.pio.register(SECRET_RELEASE_PORT, 1, self.secret_release)
        self.mmio = Bus("MMIO")
        self.launch_info: dict | None = None
        self.sev: SevGuest | SnpGuest | None = None
        self.running = False  # run() is executing the guest (between load and the report)
        self._interrupted = threading.Event()
        self._watchdog: _Watchdog | None = None

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
        self._owner_clock = time.monotonic()
        flags = 0
        if not self.vm.encrypted:
            for gpa, data in boot.boot_page_tables(cfg.mem_size, None):
                self.vm.write_gpa(gpa, data)
            for gpa, data in boot.image_regions(cfg.image, cfg.mem_size):
                self.vm.write_gpa(gpa, data)
            secret_len = 0
            if cfg.secret is not None:
                # Nothing protects a plain guest: the VMM simply writes the secret in.
                self._check_secret(cfg.secret)
                self.vm.write_gpa(boot.SECRET_GPA, cfg.secret)
                secret_len = len(cfg.secret)
        elif self.vm.type.snp:
            try:
                self.sev = snp_launch(self, self._snp_dev, snp_pages)
                if self.secret_release is not None and cfg.owner_exec is None:
                    # hv plays the owner: it checks reports against this platform's chain.
                    self._release_certs = self._snp_dev.export_certificates()
            except FirmwareError as e:
                raise LaunchError(str(e)) from e
            secret_len = 0
            offered = self.secret_release is not None
            self.launch_info["secret_release"] = {"offered": offered, "released": False,
                                                  "requests": 0, "outcomes": []}
            if offered:
                self.launch_info["secret_release"]["owner"] = "exec" if cfg.owner_exec else "in-process"
                flags |= boot.BOOT_INFO_SECRET_RELEASE
        else:
            secret_len = self._sev_launch()
        self.vm.write_gpa(boot.BOOT_INFO_GPA, boot.boot_info(cfg.mem_size, secret_len, flags))
        if self.vcpu.guest_state_protected:
            return  # SEV-ES: the entry state is the measured VMSA (hv.boot.initial_vmsa)
        self.vcpu.set_regs({"rip": self.loaded.entry, "rsp": boot.BOOT_STACK_TOP,
                            "rsi": boot.BOOT_INFO_GPA, "rflags": 0x2})
        self.vcpu.set_sregs({"cr3": boot.PAGE_TABLES_GPA})

    @staticmethod
    def _check_secret(secret: bytes) -> None:
        if len(secret) > boot.SECRET_MAX:
            raise LaunchError(f"secret is {len(secret)} bytes; the secret page holds {boot.SECRET_MAX}")

    @staticmethod
    def _check_release_secret(secret: bytes) -> None:
        from hv.owner import SNP_MAX_SECRET

        if not 1 <= len(secret) <= SNP_MAX_SECRET:
            raise LaunchError(f"secret is {len(secret)} bytes; an SEV-SNP guest is released "
                              f"1..{SNP_MAX_SECRET} bytes")

    # -- SEV-SNP secret release (port 0x502) -------------------------------------------------------------
    def _release_owner(self, report: bytes) -> dict:
        """The guest owner's answer to one attestation report: the --owner-exec command's, or
        hv's own as the owner, checking against this platform's certificates, the launch digest
        hv.boot predicts from the configured image (not whatever was launched) and the policy."""
        from hv.owner import RELEASE_ANSWER_FIELDS, release_secret

        cfg = self.config
        if cfg.owner_exec is not None:
            return self._owner_exec({"report": report.hex()}, RELEASE_ANSWER_FIELDS)
        if self._release_certs is None or self.sev is None:
            raise LaunchError("the guest is not launched yet")
        if self._release_expected is None:
            self._release_expected = boot.snp_launch_digest(cfg.image, cfg.mem_size, self.vm.cbitpos)
        return release_secret(report, self._release_certs, self._release_expected, cfg.secret,
                              expected_policy=self.sev.policy)

    def _owner_exec(self, request: dict, fields: tuple[str, ...]) -> dict:
        """The --owner-exec command's answer (hv.vmm.owner_exec), in what is left of --timeout:
        counted from the start of the launch under SEV and SEV-ES (the answer is part of it) and
        of the run under SEV-SNP (the guest asks while it runs: the watchdog's clock)."""
        cfg = self.config
        left = None if cfg.timeout is None else cfg.timeout - (time.monotonic() - self._owner_clock)
        try:
            return run_owner(cfg.owner_exec, request, fields, left)
        except OwnerExecError as e:
            raise LaunchError(str(e)) from None

    def _record_release(self, outcome: dict) -> None:
        if self.launch_info is None or "secret_release" not in self.launch_info:
            return
        info = self.launch_info["secret_release"]
        info["requests"] = self.secret_release.requests
        info["outcomes"] = self.secret_release.outcomes
        if outcome["status"] == 0:
            info["released"] = True

    def _sev_launch(self) -> int:
        from hv.owner import LocalOwner  # the guest owner's side, played locally when asked to
        from sevwire import Policy

        cfg = self.config
        policy = DEFAULT_POLICY if cfg.policy is None else cfg.policy
        es = self.vm.type is Mode.SEV_ES
        if es:
            policy |= Policy.ES  # the VM type decides: an ES guest runs under an ES policy
        dev = SevDevice(self.kvm)
        try:
            dev.ensure_init(es=True)
            status = dev.platform_status()
            self.sev = sev = SevGuest(self.vm, dev, policy)
            self.vm.sev = sev
            owner = None
            digest = boot.launch_digest(cfg.image, cfg.mem_size, self.vm.cbitpos, es=es)
            if cfg.session_dir is not None:
                godh, session = _read_session(cfg.session_dir)
            else:
                # The convenient local mode: hv plays the guest owner with a fresh owner key, behind
                # a channel that keeps TEK and TIK out of the VMM's objects (hv.owner.LocalOwner).
                pdh, _chain = dev.pdh_cert_export()
                owner = LocalOwner(cfg.secret or b"", digest)
                godh, session = owner.start(pdh, policy)
            sev.launch_start(godh, session)
            for gpa, data in boot.launch_regions(cfg.image, cfg.mem_size, self.vm.cbitpos):
                self.vm.write_gpa(gpa, data)
                sev.launch_update_data(gpa, len(data))
            if es:
                for vmsa in boot.launch_vmsas(cfg.image, cfg.mem_size):
                    sev.launch_update_vmsa(self.vcpu, vmsa)
            measurement, mnonce = sev.launch_measure()
            request = {"measurement": measurement.hex(), "mnonce": mnonce.hex(),
                       "api_major": status.api_major, "api_minor": status.api_minor,
                       "build": status.build, "policy": policy}
            self.launch_info = dict(request, handle=sev.handle, asid=self.vm.asid,
                                    digest=digest.hex(),
                                    mode=self.vm.type)
            secret_len = 0
            answer = None
            if cfg.owner_exec is not None:
                answer = self._owner_exec(request, ("header", "data"))
            elif cfg.secret is not None:
                if owner is None:
                    raise LaunchError("--secret-file with --session needs --owner-exec: only the owner holds the transport keys")
                self._check_secret(cfg.secret)
                answer = owner.answer(request)
            if answer is not None:
                if "refuse" in answer:
                    raise LaunchError(f"the guest owner refused the launch: {answer['refuse']}")
                header, data = bytes.fromhex(answer["header"]), bytes.fromhex(answer["data"])
                sev.launch_secret(header, data, boot.SECRET_GPA)
                secret_len = len(data)
            sev.launch_finish()
            self.launch_info["secret_injected"] = secret_len > 0
            return secret_len
        except FirmwareError as e:
            raise LaunchError(str(e)) from e
        except (KeyError, ValueError) as e:
            raise LaunchError(f"bad answer from the guest owner: {e}") from e

    # -- running -----------------------------------------------------------------------------------------
    def run(self, load: bool = True) -> RunResult:
        """Load the guest (unless already loaded with `load()`), then run until it exits,
        crashes or runs out of time or budget."""
        t0 = time.perf_counter()
        if load:
            self.load()
        cfg = self.config
        hook = cfg.on_exit
        self._owner_clock = time.monotonic()
        self._watchdog = watchdog = _Watchdog(self.vcpu, cfg.timeout)
        if self._interrupted.is_set():  # interrupt() came before the watchdog existed
            watchdog.interrupt()
        reason, code, guest_code, message = "crash", EXIT_CRASH, None, ""
        self.running = True
        try:
            while True:
                e = self.vcpu.run()
                try:
                    if hook is not None and hook(self, e):
                        continue  # the hook handled this exit itself (e.g. resolved a MemoryFault)
                except StopGuest as stop:
                    reason, code, message = stop.reason, stop.exit_code, str(stop)
                    break
                if isinstance(e, K.Io):
                    if e.is_in:
                        e.data = self.pio.read(e.port, e.size)
                        continue
                    self.pio.write(e.port, e.size, e.data)
                    if self.debug_exit.code is not None:
                        reason, guest_code = "exit", self.debug_exit.code
                        code = guest_code
                        break
                elif isinstance(e, K.Mmio):
                    if e.is_write:
                        self.mmio.write(e.gpa, e.size, e.data)
                    else:
                        e.data = self.mmio.read(e.gpa, e.size)
                elif isinstance(e, K.Hlt):
                    reason, guest_code, code = "hlt", 0, 0
                    break
                elif isinstance(e, K.Hypercall):
                    e.ret = -1000  # KVM_ENOSYS: no hypercalls are offered
                elif isinstance(e, (K.Rdmsr, K.Wrmsr)):
                    e.error = True  # unknown MSR: #GP, as KVM does without ignore_msrs
                elif isinstance(e, K.Intr):
                    if self._interrupted.is_set():
                        reason, code, message = "interrupted", EXIT_INTERRUPTED, "guest stopped: interrupted"
                    elif watchdog.fired:
                        reason, code = "timeout", EXIT_TIMEOUT
                        message = f"guest stopped: still running after the {cfg.timeout:g} s timeout"
                    elif "budget" in e.detail:
                        reason, code = "budget", EXIT_TIMEOUT
                        message = f"guest stopped: {e.detail} (--max-insns)"
                    else:
                        continue
                    break
                elif isinstance(e, K.SystemEvent):
                    # The guest asked to be terminated (GHCB termination request) or gave the
                    # hypervisor a request it cannot even answer: a clean stop, not an hv error.
                    reason, code, message = "terminated", EXIT_CRASH, e.detail
                    break
                else:
                    reason, code = ("shutdown" if isinstance(e, K.Shutdown) else "crash"), EXIT_CRASH
                    message = self._crash(e)
                    break
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

    def _crash(self, e) -> str:
        detail = getattr(e, "detail", "")
        if isinstance(e, MemoryFault):
            detail = f"nested page fault at GPA {e.gpa:#x} that the hypervisor cannot resolve"
        what = f"{e.reason}: {detail}" if detail else e.reason
        if self.vcpu.guest_state_protected:
            return crash_report(what, None, None, None, None)
        regs = self.vcpu.get_regs()
        code = None if self.vm.encrypted else self.vcpu.code_bytes(regs["rip"], 48)
        return crash_report(what, regs, self.vcpu.get_sregs(), code, regs["rip"])

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


def _read_session(directory: str) -> tuple[bytes, bytes]:
    from pathlib import Path

    d = Path(directory)
    try:
        godh = (d / "godh.cert").read_bytes()
        blob = (d / "launch_blob.bin").read_bytes()
    except OSError as e:
        raise LaunchError(f"session directory {directory}: {e.strerror}: {e.filename}") from e
    if len(godh) != 2084 or len(blob) != 128:
        raise LaunchError(f"session directory {directory}: godh.cert must be 2084 bytes and "
                          f"launch_blob.bin 128 bytes (got {len(godh)} and {len(blob)})")
    return godh, blob


def secret_sha256(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()
