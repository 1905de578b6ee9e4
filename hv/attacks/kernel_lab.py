"""The lab's Linux guest: a stock kernel and hv's test initramfs, as `hv run --kernel` boots them.

The memory attacks (A01 dump, A02 cold boot, A03 DMA), A04 (registers at exits), A05 (replay) and
A07 (SEVered) take a kernel too (`hv attack run A05 --kernel K --initrd I [--append A] [--sev |
--sev-es | --sev-snp]`). The kernel boots under the mode asked for through hv.vmm's KernelVmm,
with its measured launch when encrypted, runs the initramfs's /init with `hv.init=poweroff` added
to the command line, and stops at its power-off: the ACPI S5 write is its last exit, and the
unpacked initramfs (the page cache of its root file system) is still in memory there. That is
where the memory attacks look (hv.attacks.snoop.snoop_kernel); A04 also looks at every exit
before it (KernelLab.run's on_exit), and A05 and A07 act at exits the console times for them.

The memory attacks' ground truth is the initramfs's marker file (/etc/hv-secret, tools/linux.py),
which the judge reads from the initrd it is given (hv.attacks.verdict.judge_kernel); the attacks
here never do. A04's is the guest's RIP, RSP and CR3 at its last exit, which the judge reads
from the core after the run (hv.attacks.verdict.judge_kernel_registers). A05's and A07's is the
guest's own plaintext, which the judge looks at through the core at the exits where the attack
acted (`checkpoint`: the attack names the moment and its pages, never sees what the judge saw).
There is no honest control: a plain kernel shares everything, and an encrypted one puts no text
known in advance into the pages it decrypts (bounce buffers, under SEV-ES its GHCBs), so a
"failed" verdict rests on the plain run, which reads the same memory the same way, succeeding.
Under SEV-SNP the kernel runs as under SEV-ES (its registers in the VMSA, its exits through the
GHCB) with the RMP besides, so A01-A04 go as under SEV-ES; A05 and A07 meet the RMP.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hv.attacks.lab import psp_state_path
from hv.hw.grants import PhysicalAccess
from hv.kvm import Mode
from hv.vmm.initramfs import POWEROFF_PARAM
from hv.vmm.linux import KernelConfig, KernelVmm
from hv.vmm.linux_grants import kernel_physical_access
from hv.vmm.runloop import RunResult

__all__ = ["BOOT_LIMIT", "KERNEL_MODES", "KernelFiles", "KernelLab", "NO_CONTROL"]

BOOT_LIMIT = 900.0  # seconds of wall time for one boot (a plain one takes about 30 here)
KERNEL_MODES = (Mode.PLAIN, Mode.SEV, Mode.SEV_ES, Mode.SEV_SNP)  # what KernelVmm launches
NO_CONTROL = "no control page: the kernel shares no page of known text with the hypervisor"


@dataclass(frozen=True)
class KernelFiles:
    """What the lab boots: the bzImage, the initrd (which holds the marker) and the user's
    command line (the lab adds hv.init=poweroff)."""

    kernel: bytes
    initrd: bytes
    append: str = ""
    kernel_name: str = "bzImage"

    @classmethod
    def read(cls, kernel: str | Path, initrd: str | Path, append: str = "") -> "KernelFiles":
        return cls(Path(kernel).read_bytes(), Path(initrd).read_bytes(), append, Path(kernel).name)


class KernelLab:
    """One kernel guest on one machine, launched honestly, run to its power-off."""

    def __init__(self, files: KernelFiles, mode: str, *, physical: bool = False,
                 timeout: float = BOOT_LIMIT, mem_size: int = KernelConfig.mem_size):
        self.mode = Mode(mode)
        if self.mode not in KERNEL_MODES:
            raise ValueError(f"a kernel runs plain or under SEV, SEV-ES or SEV-SNP, not {self.mode.label}")
        self.config = KernelConfig(
            kernel=files.kernel, initrd=files.initrd, append=f"{files.append} {POWEROFF_PARAM}".strip(),
            timeout=timeout, kernel_name=files.kernel_name, mode=self.mode, mem_size=mem_size,
            psp_state=psp_state_path() if self.mode.encrypted else None)
        self.vmm = KernelVmm(self.config)
        self.vm = self.vmm.vm
        self._physical = kernel_physical_access(self.vmm) if physical else None
        self.result: RunResult | None = None
        # The judge's look at the guest at a checkpoint (hv.attacks.verdict): set by the judge,
        # called with (lab, name, gpas); the attack gets nothing back.
        self.witness: Callable[["KernelLab", str, tuple[int, ...]], None] | None = None

    @property
    def mem_size(self) -> int:
        return self.config.mem_size

    def console(self) -> tuple[int, bytes]:
        """The guest's serial console as the VMM's UART has it: how many bytes the guest wrote
        so far, and the last of them (the tail the UART keeps)."""
        uart = self.vmm.platform.uart
        return uart.sent, uart.transmitted

    def checkpoint(self, name: str, *gpas: int) -> None:
        """The attack acted here, on these guest pages: the judge may look at the guest now,
        while it is stopped at this exit (a no-op when no judge watches)."""
        if self.witness is not None:
            self.witness(self, name, gpas)

    def physical(self) -> PhysicalAccess:
        """A physical attacker's access (as Lab.physical): only when made with physical=True."""
        if self._physical is None:
            raise PermissionError("this lab was not granted physical access (KernelLab(..., physical=True))")
        return self._physical

    def run(self, on_exit: Callable[[KernelVmm], None] | None = None) -> RunResult:
        """Launch (measured when encrypted) and run until the guest stops; `on_exit(vmm)` at
        every exit of the run loop, while the guest is stopped there."""
        self.vmm.exit_hook = on_exit
        self.result = self.vmm.run()
        return self.result
