"""The 8254 programmable interval timer (ports 0x40-0x43) and port 0x61 (system control port B).

Counters run at 1.193182 MHz of guest time from the clock. Nothing ticks in the background: the
count, OUT and the next interrupt are computed from when a count was loaded, so the VMM only has
to call `update(now_ns)` when `next_deadline_ns()` says an IRQ 0 edge is due.

Channel 0 drives IRQ 0 (its OUT's rising edges, which the PIC latches). Channel 2's gate is port
0x61 bit 0 and its OUT reads back at port 0x61 bit 5: Linux calibrates the TSC against it.
Modes follow the 8254 datasheet: 0 interrupt on terminal count, 1 hardware one-shot, 2 rate
generator, 3 square wave, 4 software strobe (Linux's one-shot clockevent), 5 hardware strobe.
"""

from __future__ import annotations

from typing import Callable

from hv.vmm.clock import Clock, ns_of_tick, ticks_at

__all__ = ["PIT_HZ", "Pit8254", "SystemControlPortB"]

PIT_HZ = 1_193_182
REFRESH_HALF_PERIOD_NS = 15_085     # port 0x61 bit 4 toggles every 15.085 us on a PC

# Access modes (control word bits 5:4)
RW_LATCH, RW_LSB, RW_MSB, RW_WORD = 0, 1, 2, 3


class _Channel:
    def __init__(self, pit: "Pit8254", index: int, gate: bool):
        self._pit = pit
        self.index = index
        self.control = 0x00     # rw, mode and bcd bits of the last control word (status bits 5:0)
        self.mode = 0
        self.rw = RW_WORD
        self.reload = 0x10000   # the count register: 0 stands for 65536
        self.start = None       # tick at which the count was loaded (None: not counting)
        self.frozen = 0         # elapsed ticks while the gate holds the count
        self.gate = gate
        self.null_count = True
        self._write_lsb = None  # the LSB of a word count, waiting for its MSB
        self._latched: list[int] = []  # bytes of a latched count, in read order
        self._status: int | None = None
        self._read_msb = False  # flip-flop of an unlatched word read

    # -- time ---------------------------------------------------------------------------------

    def elapsed(self, tick: int) -> int | None:
        """CLK pulses counted since the load, or None while no count is running."""
        if self.start is None:
            return None
        if not self.gate and self.mode in (0, 2, 3, 4):
            return self.frozen
        return tick - self.start

    def count(self, tick: int) -> int:
        d = self.elapsed(tick)
        n = self.reload
        if d is None:
            return n & 0xFFFF
        if self.mode in (2, 3) and n > 1:
            period = d % n
            if self.mode == 3:
                return (n - 2 * period) % n or n     # counts down by two, twice a period
            return n - period
        return (n - d) & 0xFFFF

    def out(self, tick: int) -> bool:
        d = self.elapsed(tick)
        n = self.reload
        if self.mode in (0, 1):
            # Mode 0: low from the load until terminal count. Mode 1: high until triggered.
            return d is None and self.mode == 1 or d is not None and d >= n
        if d is None:
            return True
        if self.mode == 2:
            return d % n != n - 1                     # low for the one CLK at count 1
        if self.mode == 3:
            return d % n < (n + 1) // 2               # high for the first half (the longer one)
        return d != n                                 # modes 4, 5: low for one CLK at count 0

    def next_rise(self, after: int) -> int | None:
        """The first tick > `after` at which OUT goes from low to high."""
        if self.start is None or (not self.gate and self.mode in (0, 2, 3, 4)):
            return None
        n, d = self.reload, after - self.start
        if self.mode in (0, 1):
            edge = n                                  # terminal count: OUT goes high and stays
        elif self.mode in (2, 3):
            edge = (max(d, 0) // n + 1) * n
        else:
            edge = n + 1                              # the end of the strobe at count 0
        tick = self.start + edge
        return tick if tick > after else None

    # -- the ports ----------------------------------------------------------------------------

    def write_control(self, value: int, tick: int) -> None:
        rw = (value >> 4) & 3
        if rw == RW_LATCH:
            self.latch_count(tick)
            return
        self.rw = rw
        self.mode = (value >> 1) & 7
        if self.mode > 5:
            self.mode -= 4                            # 6 and 7 are aliases of 2 and 3
        self.control = value & 0x3F
        self.start = None                             # counting stops until a count is written
        self.null_count = True
        self._write_lsb = None
        self._read_msb = False
        self._latched = []
        self._status = None

    def latch_count(self, tick: int) -> None:
        if self._latched:
            return                                    # a second latch before the read is ignored
        value = self.count(tick)
        if self.rw == RW_LSB:
            self._latched = [value & 0xFF]
        elif self.rw == RW_MSB:
            self._latched = [value >> 8]
        else:
            self._latched = [value & 0xFF, value >> 8]

    def latch_status(self, tick: int) -> None:
        if self._status is None:
            self._status = (0x80 if self.out(tick) else 0) | (0x40 if self.null_count else 0) \
                | self.control

    def write_count(self, value: int, tick: int) -> None:
        if self.rw == RW_LSB:
            self._load(value, tick)
        elif self.rw == RW_MSB:
            self._load(value << 8, tick)
        elif self._write_lsb is None:
            self._write_lsb = value
            if self.mode == 0:
                self.start = None                     # the first byte stops the count, OUT low
        else:
            self._load(self._write_lsb | value << 8, tick)
            self._write_lsb = None

    def _load(self, value: int, tick: int) -> None:
        self.reload = value or 0x10000
        self.null_count = False
        if self.mode in (1, 5):
            self.start = None                         # waits for a rising gate
        else:
            self.start = tick
            self.frozen = 0
        self._pit.reprogrammed(self)

    def read(self, tick: int) -> int:
        if self._status is not None:
            value, self._status = self._status, None
            return value
        if self._latched:
            return self._latched.pop(0)
        value = self.count(tick)
        if self.rw == RW_LSB:
            return value & 0xFF
        if self.rw == RW_MSB:
            return value >> 8
        self._read_msb = not self._read_msb
        return value & 0xFF if self._read_msb else value >> 8

    def set_gate(self, gate: bool, tick: int) -> None:
        if gate == self.gate:
            return
        if not gate:
            d = self.elapsed(tick)
            self.frozen = d if d is not None else 0
        elif self.start is not None or self.mode in (1, 5):
            if self.mode in (1, 2, 3, 5) and not self.null_count:
                self.start = tick                     # a rising gate (re)starts these modes
            elif self.start is not None:
                self.start = tick - self.frozen       # modes 0 and 4 resume where they were
        self.gate = gate


class Pit8254:
    """Ports 0x40-0x42 (channel data) and 0x43 (control word). `irq(line, level)` gets IRQ 0."""

    def __init__(self, clock: Clock, irq: Callable[[int, bool], None]):
        self._clock = clock
        self._irq = irq
        # Channels 0 and 1 have their gates tied high; channel 2's is port 0x61 bit 0.
        self.channels = [_Channel(self, 0, True), _Channel(self, 1, True), _Channel(self, 2, False)]
        self._next_irq_tick: int | None = None   # channel 0's next rising OUT edge

    def _tick(self) -> int:
        return ticks_at(self._clock.now_ns(), PIT_HZ)

    def reprogrammed(self, channel: _Channel) -> None:
        if channel.index == 0:
            start = channel.start
            self._next_irq_tick = None if start is None else channel.next_rise(start)

    def read(self, offset: int, size: int) -> int:
        if offset == 3:
            return 0xFF                               # the control word is write-only
        return self.channels[offset].read(self._tick())

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        tick = self._tick()
        if offset < 3:
            channel = self.channels[offset]
            channel.write_count(value, tick)
            if offset == 0 and channel.start is None:
                self._next_irq_tick = None            # mode 0's first byte stops the count
            return
        select = value >> 6
        if select == 3:
            self._read_back(value, tick)
            return
        channel = self.channels[select]
        channel.write_control(value, tick)
        if select == 0:
            self._next_irq_tick = None                # stopped until its count is written

    def _read_back(self, value: int, tick: int) -> None:
        for i, channel in enumerate(self.channels):
            if value & (2 << i):
                if not value & 0x20:
                    channel.latch_count(tick)
                if not value & 0x10:
                    channel.latch_status(tick)

    # -- for the VMM --------------------------------------------------------------------------

    def next_deadline_ns(self) -> int | None:
        """Guest time of the next IRQ 0 edge (channel 0's OUT rising), None if none is coming."""
        if self._next_irq_tick is None:
            return None
        return ns_of_tick(self._next_irq_tick, PIT_HZ)

    def update(self, now_ns: int) -> None:
        """Raise the IRQ 0 edges due by `now_ns`; missed periods coalesce into one, as the
        PIC's IRR holds only one request."""
        tick = ticks_at(now_ns, PIT_HZ)
        if self._next_irq_tick is None or tick < self._next_irq_tick:
            return
        self._irq(0, True)
        self._irq(0, False)
        self._next_irq_tick = self.channels[0].next_rise(tick)

    # -- channel 2 as port 0x61 sees it ---------------------------------------------------------

    def set_speaker_gate(self, gate: bool) -> None:
        self.channels[2].set_gate(gate, self._tick())

    def speaker_out(self) -> bool:
        return self.channels[2].out(self._tick())


class SystemControlPortB:
    """Port 0x61: bit 0 channel 2's gate, bit 1 speaker data (stored), bits 2-3 NMI check
    enables (stored), bit 4 the refresh toggle, bit 5 channel 2's OUT; bits 6-7 (NMI sources)
    read 0."""

    def __init__(self, clock: Clock, pit: Pit8254):
        self._clock = clock
        self._pit = pit
        self._value = 0

    def read(self, offset: int, size: int) -> int:
        refresh = (self._clock.now_ns() // REFRESH_HALF_PERIOD_NS) & 1
        out2 = self._pit.speaker_out()
        return self._value | refresh << 4 | int(out2) << 5

    def write(self, offset: int, size: int, value: int) -> None:
        self._value = value & 0x0F
        self._pit.set_speaker_gate(bool(value & 1))
