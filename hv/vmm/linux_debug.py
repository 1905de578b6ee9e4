"""The GDB stub for a Linux guest: the kernel's vCPU seen through the interface the stub and
hv.vmm.debugview use for every guest (KVM's register and translate calls), so one stub serves
both. A plain kernel's memory and registers are the hypervisor's to read and write."""

from __future__ import annotations

import threading

from unicorn import x86_const as X

from hv.hw.oscpu import OsCpu

__all__ = ["KernelVcpuView"]

_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
         "r12", "r13", "r14", "r15", "rip", "rflags")
_SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
_IDS = {name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in _GPRS + _SEGMENTS}


class KernelVcpuView:
    """get_regs/set_regs/get_sregs/translate/kick/add_code_hook over an OsCpu."""

    guest_state_protected = False
    vmsa_spa = None
    index = 0

    def attach_vmsa(self, spa: int) -> None:
        """The launch measured and encrypted this vCPU's initial state (SEV-ES): from here on
        the hypervisor has no view of its registers."""
        self.vmsa_spa = spa
        self.guest_state_protected = True

    def __init__(self, cpu: OsCpu):
        self._cpu = cpu
        self._thread: threading.Thread | None = None  # the vCPU's thread, once it runs

    def running_on(self, thread: threading.Thread) -> None:
        self._thread = thread

    def get_regs(self) -> dict[str, int]:
        return {name: self._cpu.reg(_IDS[name]) for name in _GPRS}

    def set_regs(self, regs: dict[str, int]) -> None:
        for name, value in regs.items():
            if name in _GPRS:
                self._cpu.set_reg(_IDS[name], value)

    def get_sregs(self) -> dict[str, int]:
        return {name: self._cpu.reg(_IDS[name]) for name in _SEGMENTS}

    def translate(self, gva: int) -> tuple[int, bool] | None:
        gpa = self._cpu.translate(gva)
        return None if gpa is None else (gpa, False)

    def kick(self) -> None:
        """Stop for the debugger: right here inside a breakpoint's hook, else at the next clean
        point (another thread: an attaching debugger, Ctrl-C in gdb)."""
        if threading.current_thread() is self._thread:
            self._cpu.stop_here()
        else:
            self._cpu.request_stop()

    def add_code_hook(self, callback, address: int | None = None):
        return self._cpu.add_code_hook(callback, address)

    def remove_code_hook(self, handle) -> None:
        self._cpu.remove_code_hook(handle)
