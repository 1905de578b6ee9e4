"""The CMOS real-time clock (MC146818 as a PC has it): index port 0x70, data port 0x71.

The time is the host's UTC clock plus whatever offset the guest set. Registers 0-9 are the
clock and alarms, A-D the status registers, 0x32 the century (the FADT's CENTURY field points
there); every other byte of the 128 is battery-backed RAM. Bit 7 of the index port is the NMI
mask on a PC: stored, and otherwise without effect (no NMI source exists here).

Not modelled: the RTC's interrupt (IRQ 8) with its periodic, alarm and update-ended flags;
register C reads 0. Alarms are stored as RAM.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable

__all__ = ["CmosRtc"]

SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY, MONTH, YEAR = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32
TIME_REGS = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY, MONTH, YEAR, CENTURY)

A_UIP = 0x80
A_DEFAULT = 0x26        # 32.768 kHz time base, 1024 Hz periodic rate
B_SET, B_DM_BINARY, B_24H = 0x80, 0x04, 0x02
D_VRT = 0x80            # valid RAM and time: the battery is good
# UIP is high for the 244 us before each update of the time registers.
UIP_WINDOW_S = 244e-6


def _to_bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


class CmosRtc:
    """Offsets 0 (index, write) and 1 (data). `host_time()` gives UTC seconds since the epoch."""

    def __init__(self, host_time: Callable[[], float] = time.time):
        self._host_time = host_time
        self._ram = bytearray(128)
        self._ram[REG_A] = A_DEFAULT
        self._ram[REG_B] = B_24H            # BCD, 24-hour: what a PC's firmware leaves
        self._ram[REG_D] = D_VRT
        self._index = 0
        self.nmi_disabled = False
        self._offset = 0.0                  # guest time minus host time, in seconds
        self._held: dict[int, int] | None = None  # the time registers while B.SET stops updates

    # -- time in and out of register form ----------------------------------------------------

    def _encode(self, value: int) -> int:
        return value if self._ram[REG_B] & B_DM_BINARY else _to_bcd(value)

    def _decode(self, value: int) -> int:
        return value if self._ram[REG_B] & B_DM_BINARY else _from_bcd(value)

    def _time_registers(self, now: float) -> dict[int, int]:
        t = datetime.fromtimestamp(int(now), timezone.utc)
        hour = t.hour
        if self._ram[REG_B] & B_24H:
            hours = self._encode(hour)
        else:
            hours = self._encode(hour % 12 or 12) | (0x80 if hour >= 12 else 0)
        return {
            SECONDS: self._encode(t.second),
            MINUTES: self._encode(t.minute),
            HOURS: hours,
            DAY_OF_WEEK: self._encode(t.isoweekday() % 7 + 1),   # 1 is Sunday
            DAY: self._encode(t.day),
            MONTH: self._encode(t.month),
            YEAR: self._encode(t.year % 100),
            CENTURY: self._encode(t.year // 100),
        }

    def _commit(self, regs: dict[int, int]) -> None:
        """The guest released B.SET: its registers become the new time."""
        hours = regs[HOURS]
        if self._ram[REG_B] & B_24H:
            hour = self._decode(hours)
        else:
            hour = self._decode(hours & 0x7F) % 12 + (12 if hours & 0x80 else 0)
        try:
            t = datetime(self._decode(regs[CENTURY]) * 100 + self._decode(regs[YEAR]),
                         self._decode(regs[MONTH]), self._decode(regs[DAY]), hour,
                         self._decode(regs[MINUTES]), self._decode(regs[SECONDS]),
                         tzinfo=timezone.utc)
        except ValueError:
            return                          # an impossible date: the clock keeps its time
        self._offset = t.timestamp() - int(self._host_time())

    def _now(self) -> float:
        return self._host_time() + self._offset

    # -- the ports -------------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF                     # the index register is write-only
        index = self._index
        if index in TIME_REGS:
            regs = self._held if self._held is not None else self._time_registers(self._now())
            return regs[index]
        if index == REG_A:
            now = self._now()
            uip = A_UIP if self._held is None and now - int(now) >= 1 - UIP_WINDOW_S else 0
            return self._ram[REG_A] | uip
        if index == REG_C:
            return 0
        if index == REG_D:
            return D_VRT
        return self._ram[index]

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            self._index = value & 0x7F
            self.nmi_disabled = bool(value & 0x80)
            return
        index = self._index
        if index in TIME_REGS:
            regs = self._held if self._held is not None else self._time_registers(self._now())
            regs[index] = value
            if self._held is None:
                self._commit(regs)          # a write without SET takes effect at once
        elif index == REG_A:
            self._ram[REG_A] = value & 0x7F
        elif index == REG_B:
            self._write_b(value)
        elif index not in (REG_C, REG_D):
            self._ram[index] = value

    def _write_b(self, value: int) -> None:
        was_set = self._ram[REG_B] & B_SET
        if value & B_SET and not was_set:
            self._held = self._time_registers(self._now())
        self._ram[REG_B] = value
        if was_set and not value & B_SET and self._held is not None:
            held, self._held = self._held, None
            self._commit(held)
