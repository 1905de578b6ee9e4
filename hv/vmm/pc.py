"""The PC platform a stock Linux kernel expects around its CPU, assembled and wired.

    8259A pair (0x20, 0xA0) + ELCR (0x4D0)   <- IRQ 0 from the 8254 PIT (0x40-0x43, port 0x61)
                                             <- IRQ 4 from the 16550A at COM1 (0x3F8)
                                             <- IRQ 9 (level) from the ACPI SCI (PM blocks 0x600)
    CMOS RTC (0x70), i8042 (0x60, 0x64), reset control (0xCF9)

The VMM's side of the contract: call `update(now_ns)` whenever guest time reaches
`next_deadline_ns()` (and after terminal input arrived), then, while the guest can take an
interrupt (RFLAGS.IF), `has_interrupt()` and `acknowledge()` give the vector to deliver through
the guest's IDT. `on_event` receives "poweroff" or "reset". Everything here runs on the vCPU
thread except `feed_input`, which any thread may call.
"""

from __future__ import annotations

import time
from typing import Callable

from hv.boot.acpi_tables import PmLayout, build_acpi
from hv.vmm.acpi import AcpiPm, ResetControl
from hv.vmm.bus import Bus, Device
from hv.vmm.clock import Clock
from hv.vmm.i8042 import I8042
from hv.vmm.pic import PicPair
from hv.vmm.pit import Pit8254, SystemControlPortB
from hv.vmm.rtc import CmosRtc
from hv.vmm.uart import Uart16550A

__all__ = ["COM1_BASE", "COM1_IRQ", "PcPlatform"]

COM1_BASE, COM1_IRQ = 0x3F8, 4


class PcPlatform:
    """All the legacy devices of one PC. `serial_out(bytes)` gets COM1's output as it is sent."""

    def __init__(self, clock: Clock, serial_out: Callable[[bytes], None],
                 on_event: Callable[[str], None], *,
                 on_input: Callable[[], None] | None = None,
                 host_time: Callable[[], float] = time.time,
                 pm_layout: PmLayout = PmLayout()):
        self.pm_layout = pm_layout
        self._on_input = on_input
        self.pic = PicPair()
        self.pic.set_level_triggered(pm_layout.sci_irq)  # as the firmware leaves the ELCR
        self.pit = Pit8254(clock, self.pic.set_irq)
        self.port61 = SystemControlPortB(clock, self.pit)
        self.uart = Uart16550A(serial_out, irq=self._com1_irq)
        self.rtc = CmosRtc(host_time)
        self.pm = AcpiPm(clock, self._sci, on_event, pm_layout)
        self.reset_control = ResetControl(on_event)
        self.i8042 = I8042(on_event)

    def _com1_irq(self, level: bool) -> None:
        self.pic.set_irq(COM1_IRQ, level)

    def _sci(self, level: bool) -> None:
        self.pic.set_irq(self.pm_layout.sci_irq, level)

    def port_map(self) -> list[tuple[int, int, Device]]:
        """(base, length, device) of every port range, in address order."""
        pm = self.pm_layout
        return sorted([
            (0x20, 2, self.pic.master),
            (0x40, 4, self.pit),
            (0x60, 1, self.i8042.data_port),
            (0x61, 1, self.port61),
            (0x64, 1, self.i8042.command_port),
            (0x70, 2, self.rtc),
            (0xA0, 2, self.pic.slave),
            (COM1_BASE, 8, self.uart),
            (0x4D0, 2, self.pic.elcr),
            (pm.base, pm.length, self.pm),
            (pm.reset_port, 1, self.reset_control),
        ], key=lambda entry: entry[0])

    def attach(self, pio_bus: Bus) -> None:
        """Register every device on the port bus (BusError if something already sits there)."""
        for base, length, device in self.port_map():
            pio_bus.register(base, length, device)

    def build_acpi(self, base_gpa: int) -> tuple[bytes, int]:
        """ACPI tables describing these devices: (blob to copy at base_gpa, RSDP address)."""
        return build_acpi(base_gpa, self.pm_layout)

    # -- the run loop's calls ----------------------------------------------------------------------

    def feed_input(self, data: bytes) -> None:
        """Terminal input for COM1 (any thread). It reaches the guest at the next `update`."""
        self.uart.feed(data)
        if self._on_input is not None:
            self._on_input()

    def update(self, now_ns: int) -> None:
        """Bring the timers to `now_ns` and take in waiting input: interrupts that are due."""
        self.pit.update(now_ns)
        self.pm.update(now_ns)
        self.uart.sync()

    def next_deadline_ns(self) -> int | None:
        """The earliest guest time at which a device raises an interrupt by itself; one at or
        before the present (0 when the UART owes a THRE interrupt) means: update now."""
        if self.uart.tx_busy:
            return 0                    # a THRE interrupt is owed: update at once
        deadlines = [d for d in (self.pit.next_deadline_ns(), self.pm.next_deadline_ns())
                     if d is not None]
        return min(deadlines, default=None)

    def has_interrupt(self) -> bool:
        return self.pic.has_interrupt()

    def acknowledge(self) -> int:
        """INTA: the vector to deliver (a spurious 7/15 vector when the request went away)."""
        return self.pic.acknowledge()
