import pytest

from hv.vmm.bus import Bus, BusError
from hv.vmm.devices import DebugExit, Uart16550


class Recorder:
    def __init__(self):
        self.seen = []

    def read(self, offset, size):
        self.seen.append(("r", offset, size))
        return 0xAB

    def write(self, offset, size, value):
        self.seen.append(("w", offset, size, value))


def test_devices_see_offsets():
    bus, dev = Bus("pio"), Recorder()
    bus.register(0x3F8, 8, dev)
    assert bus.read(0x3FD, 1) == 0xAB
    bus.write(0x3F8, 1, 0x41)
    assert dev.seen == [("r", 5, 1), ("w", 0, 1, 0x41)]


def test_unclaimed_reads_all_ones_and_writes_vanish():
    bus = Bus("pio")
    assert bus.read(0x60, 1) == 0xFF and bus.read(0x60, 2) == 0xFFFF and bus.read(0x60, 4) == 0xFFFFFFFF
    bus.write(0x60, 1, 1)


def test_overlapping_or_empty_ranges_are_refused():
    bus = Bus("pio")
    bus.register(0x3F8, 8, Recorder())
    with pytest.raises(BusError, match="overlaps"):
        bus.register(0x3FF, 2, Recorder())
    with pytest.raises(BusError, match="empty"):
        bus.register(0x100, 0, Recorder())
    bus.register(0x400, 1, Recorder())  # adjacent is fine


def test_uart_transmits_and_reports_ready():
    out = []
    uart = Uart16550(out.append)
    assert uart.read(5, 1) & 0x20
    uart.write(3, 1, 0x80)  # DLAB: divisor latch, not data
    uart.write(0, 1, 1)
    uart.write(3, 1, 0x03)
    uart.write(0, 1, ord("x"))
    assert out == [b"x"] and uart.transmitted == b"x"


def test_debug_exit_keeps_the_low_byte():
    d = DebugExit()
    d.write(0, 4, 0x1234)
    assert d.code == 0x34
