"""The vCPU run loop, kvmtool's: run the vCPU, switch once on the exit reason, hand port I/O and
MMIO to their buses, and stop for a guest's exit, a halt, a crash, the wall-clock watchdog, the
instruction budget or an interrupt from the user. What a run ends with is a RunResult, whose
exit_code is hv's process status.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from hv.kvm import MemoryFault, exits as K
from hv.vmm.report import crash_report

__all__ = ["EXIT_CRASH", "EXIT_INTERRUPTED", "EXIT_LAUNCH", "EXIT_TIMEOUT", "EXIT_USAGE",
           "RunResult", "StopGuest", "Watchdog", "crash_message", "run_loop"]

EXIT_USAGE = 2
EXIT_LAUNCH = 3
EXIT_TIMEOUT = 124
EXIT_CRASH = 125
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


class StopGuest(Exception):
    """Raised by an exit hook to end the run cleanly: `reason` and `exit_code` go into the
    RunResult, the text into its message (hv.vmm.migrate: the guest was sent away)."""

    def __init__(self, reason: str, exit_code: int, message: str):
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code


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


class Watchdog:
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


def run_loop(vmm, watchdog: Watchdog, interrupted: threading.Event) -> tuple[str, int, int | None, str]:
    """Run `vmm`'s vCPU until the run ends: (reason, hv's status, the guest's code, message)."""
    cfg = vmm.config
    hook = cfg.on_exit
    reason, code, guest_code, message = "crash", EXIT_CRASH, None, ""
    while True:
        e = vmm.vcpu.run()
        try:
            if hook is not None and hook(vmm, e):
                continue  # the hook handled this exit itself (e.g. resolved a MemoryFault)
        except StopGuest as stop:
            reason, code, message = stop.reason, stop.exit_code, str(stop)
            break
        if isinstance(e, K.Io):
            if e.is_in:
                e.data = vmm.pio.read(e.port, e.size)
                continue
            vmm.pio.write(e.port, e.size, e.data)
            if vmm.debug_exit.code is not None:
                reason, guest_code = "exit", vmm.debug_exit.code
                code = guest_code
                break
        elif isinstance(e, K.Mmio):
            if e.is_write:
                vmm.mmio.write(e.gpa, e.size, e.data)
            else:
                e.data = vmm.mmio.read(e.gpa, e.size)
        elif isinstance(e, K.Hlt):
            reason, guest_code, code = "hlt", 0, 0
            break
        elif isinstance(e, K.Hypercall):
            e.ret = K.KVM_ENOSYS  # no hypercalls are offered
        elif isinstance(e, (K.Rdmsr, K.Wrmsr)):
            e.error = True  # unknown MSR: #GP, as KVM does without ignore_msrs
        elif isinstance(e, K.Intr):
            if interrupted.is_set():
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
            message = crash_message(vmm, e)
            break
    return reason, code, guest_code, message


def crash_message(vmm, e) -> str:
    """The crash report of exit `e`: registers and code only where the hypervisor may see them."""
    detail = getattr(e, "detail", "")
    if isinstance(e, MemoryFault):
        detail = f"nested page fault at GPA {e.gpa:#x} that the hypervisor cannot resolve"
    what = f"{e.reason}: {detail}" if detail else e.reason
    vcpu = vmm.vcpu
    if vcpu.guest_state_protected:
        return crash_report(what, None, None, None, None)
    regs = vcpu.get_regs()
    code = None if vmm.vm.encrypted else vcpu.code_bytes(regs["rip"], 48)
    return crash_report(what, regs, vcpu.get_sregs(), code, regs["rip"])
