"""The GDB stub for a Linux guest: the kernel's vCPU seen through the interface the stub and
hv.vmm.debugview use for every guest (KVM's register and translate calls), so one stub serves
both. A plain or SEV kernel's registers are the hypervisor's to read and write (under SEV the
VMCB's save area and the registers left live at an exit are plaintext).

An SEV-ES kernel's are not. The OS core does not save them into the VMSA at exits, as the part
does: they stay live in Unicorn (hv.hw.oscpu). So once LAUNCH_UPDATE_VMSA has encrypted the save
area the register calls refuse, as KVM refuses KVM_GET_REGS/SREGS for a protected vCPU, rather
than hand out that plaintext. What a hypervisor still has is the VMSA page in DRAM (`vmsa_spa`):
ciphertext (here the launch state's, never rewritten), whose words hv.kvm.vcpu.vmsa_words reads."""

from __future__ import annotations

import threading

from unicorn import x86_const as X

from hv.hw.oscpu import OsCpu
from hv.kvm import KvmError
from hv.kvm.vcpu import GPRS_OF_REGS

__all__ = ["KernelVcpuView"]

_SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
_CONTROL = ("cr0", "cr2", "cr3", "cr4")
_IDS = {name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in GPRS_OF_REGS + _SEGMENTS + _CONTROL}


class KernelVcpuView:
    """get_regs/set_regs/get_sregs/translate/kick/add_code_hook over an OsCpu; the register
    calls raise KvmError once the state is protected (SEV-ES)."""

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
        self._refuse_protected("KVM_GET_REGS")
        return {name: self._cpu.reg(_IDS[name]) for name in GPRS_OF_REGS}

    def set_regs(self, regs: dict[str, int]) -> None:
        self._refuse_protected("KVM_SET_REGS")
        for name, value in regs.items():
            if name in GPRS_OF_REGS:
                self._cpu.set_reg(_IDS[name], value)

    def get_sregs(self) -> dict[str, int]:
        """The segment selectors and the control registers CR0, CR2, CR3 and CR4."""
        self._refuse_protected("KVM_GET_SREGS")
        return {name: self._cpu.reg(_IDS[name]) for name in _SEGMENTS + _CONTROL}

    def _refuse_protected(self, call: str) -> None:
        if self.guest_state_protected:
            raise KvmError(f"{call}: vCPU {self.index}'s state is protected (SEV-ES): its registers "
                           f"are in the encrypted VMSA at SPA {self.vmsa_spa:#x}")

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
