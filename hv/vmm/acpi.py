"""ACPI fixed hardware as a PC chipset has it: the PM1 event and control registers, the PM timer,
and the reset control register at port 0xCF9 that the FADT's RESET_REG names.

This is what `poweroff -f` and `reboot -f` in a Linux guest end in: ACPICA writes SLP_TYP for S5
together with SLP_EN into PM1a_CNT (the SLP_TYP value comes from the DSDT's \\_S5 package), and
the reboot path writes RESET_VALUE to RESET_REG. Both reach the VMM as `on_event(name)`.

Register layout (ACPI 6.3, 4.8 "ACPI Hardware Specification"): PM1a_EVT_BLK is PM1_STS (16 bits,
write 1 to clear) then PM1_EN (16 bits); PM1a_CNT_BLK is PM1_CNT (16 bits); PM_TMR_BLK is the
free-running 3.579545 MHz counter (24 bits, or 32 with the FADT's TMR_VAL_EXT flag).
"""

from __future__ import annotations

from typing import Callable

from hv.boot.acpi_tables import SLP_TYP_S5, PmLayout
from hv.vmm.clock import Clock, ns_of_tick, ticks_at

__all__ = ["PM_TIMER_HZ", "SLP_TYP_S5", "AcpiPm", "PmLayout", "ResetControl"]

PM_TIMER_HZ = 3_579_545

# PM1_STS / PM1_EN bits
TMR_STS, GBL_STS, PWRBTN_STS, SLPBTN_STS, RTC_STS, WAK_STS = 1, 1 << 5, 1 << 8, 1 << 9, 1 << 10, 1 << 15
SCI_SOURCES = TMR_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS
# PM1_CNT bits
SCI_EN = 1
SLP_TYP_SHIFT, SLP_TYP_MASK = 10, 7 << 10
SLP_EN = 1 << 13

RESET_VALUE = 0x06      # SYS_RST | RST_CPU: a hard reset on Intel's reset control register
RST_CPU = 0x04


class AcpiPm:
    """PM1a event and control blocks and the PM timer, as one device over `layout.length` ports.

    `sci(level)` drives the SCI (level-triggered, IRQ 9 on a PC); `on_event("poweroff")` reports
    a write of SLP_EN with SLP_TYP 5.
    """

    def __init__(self, clock: Clock, sci: Callable[[bool], None],
                 on_event: Callable[[str], None], layout: PmLayout = PmLayout()):
        if not (layout.pm1a_evt + layout.PM1_EVT_LEN <= layout.pm1a_cnt
                and layout.pm1a_cnt + layout.PM1_CNT_LEN <= layout.pm_tmr):
            raise ValueError("the PM blocks must be in the order EVT, CNT, TMR without overlap")
        self._clock = clock
        self._sci = sci
        self._on_event = on_event
        self._layout = layout
        self._timer_bits = 32 if layout.timer_32bit else 24
        self.status = 0
        self.enable = 0
        self.control = SCI_EN       # SMI_CMD is 0 in the FADT: the platform is always in ACPI mode
        self._sci_level = False
        self._timer_half = self._half(self._clock.now_ns())

    # -- the timer ---------------------------------------------------------------------------------

    def timer(self, now_ns: int) -> int:
        return ticks_at(now_ns, PM_TIMER_HZ) & ((1 << self._timer_bits) - 1)

    def _half(self, now_ns: int) -> int:
        """How many times the timer's top bit has changed since time 0."""
        return ticks_at(now_ns, PM_TIMER_HZ) >> (self._timer_bits - 1)

    def _check_timer(self, now_ns: int) -> None:
        half = self._half(now_ns)
        if half != self._timer_half:
            self._timer_half = half
            self.status |= TMR_STS      # the top bit changed: TMR_STS, an SCI if TMR_EN

    def _update_sci(self) -> None:
        level = bool(self.control & SCI_EN and self.status & self.enable & SCI_SOURCES)
        if level != self._sci_level:
            self._sci_level = level
            self._sci(level)

    # -- for the VMM -----------------------------------------------------------------------------

    def update(self, now_ns: int) -> None:
        self._check_timer(now_ns)
        self._update_sci()

    def next_deadline_ns(self) -> int | None:
        """When TMR_STS will next be set, if the guest enabled its interrupt."""
        if not self.enable & TMR_STS:
            return None
        return ns_of_tick((self._timer_half + 1) << (self._timer_bits - 1), PM_TIMER_HZ)

    # -- the ports ---------------------------------------------------------------------------------

    def _registers(self, now_ns: int) -> bytes:
        lay = self._layout
        image = bytearray(lay.length)
        evt, cnt, tmr = lay.pm1a_evt - lay.base, lay.pm1a_cnt - lay.base, lay.pm_tmr - lay.base
        image[evt:evt + 4] = (self.status | self.enable << 16).to_bytes(4, "little")
        image[cnt:cnt + 2] = self.control.to_bytes(2, "little")
        image[tmr:tmr + 4] = self.timer(now_ns).to_bytes(4, "little")
        return bytes(image)

    def read(self, offset: int, size: int) -> int:
        now = self._clock.now_ns()
        self._check_timer(now)
        value = int.from_bytes(self._registers(now)[offset:offset + size], "little")
        self._update_sci()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        lay = self._layout
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        for start, length, handler in ((lay.pm1a_evt, 2, self._write_status),
                                       (lay.pm1a_evt + 2, 2, self._write_enable),
                                       (lay.pm1a_cnt, 2, self._write_control)):
            start -= lay.base
            lo, hi = max(offset, start), min(offset + size, start + length)
            if lo < hi:
                bits = mask = 0
                for addr in range(lo, hi):
                    bits |= data[addr - offset] << (8 * (addr - start))
                    mask |= 0xFF << (8 * (addr - start))
                handler(bits, mask)
        self._update_sci()

    def _write_status(self, bits: int, mask: int) -> None:
        self.status &= ~(bits & mask)

    def _write_enable(self, bits: int, mask: int) -> None:
        self.enable = (self.enable & ~mask) | (bits & mask)

    def _write_control(self, bits: int, mask: int) -> None:
        control = (self.control & ~mask) | (bits & mask)
        sleep = control & SLP_EN
        self.control = (control & ~SLP_EN) | SCI_EN     # SLP_EN reads 0, SCI_EN reads 1
        if sleep and (control & SLP_TYP_MASK) >> SLP_TYP_SHIFT == SLP_TYP_S5:
            self._on_event("poweroff")
        # Other sleep types (S1-S4) are not offered by the DSDT: a write of one does nothing.


class ResetControl:
    """Port 0xCF9 (Intel's reset control register): setting RST_CPU resets the machine."""

    def __init__(self, on_event: Callable[[str], None]):
        self._on_event = on_event
        self._value = 0

    def read(self, offset: int, size: int) -> int:
        return self._value

    def write(self, offset: int, size: int, value: int) -> None:
        self._value = value & 0x0A      # SYS_RST and FULL_RST are kept; RST_CPU self-clears
        if value & RST_CPU:
            self._on_event("reset")
