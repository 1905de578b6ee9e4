"""The assembled PC platform: devices on one port bus, their interrupts through the PIC pair."""

import pytest

from hv.vmm.bus import Bus, BusError
from hv.vmm.clock import ManualClock
from hv.vmm.devices import Uart16550
from hv.vmm.pc import PcPlatform

VECTOR_BASE = 0x30                  # Linux's ISA_IRQ_VECTOR(0)
PIT_HZ = 1_193_182


def make():
    clock = ManualClock()
    out, events, wakes = bytearray(), [], []
    pc = PcPlatform(clock, out.extend, events.append, on_input=lambda: wakes.append(1),
                    host_time=lambda: 1_700_000_000.0)
    bus = Bus("pio")
    pc.attach(bus)
    # init_8259A, then unmask IRQ 0, 2 (cascade), 4 and 9.
    for port, value in ((0x21, 0xFF), (0xA1, 0xFF), (0x20, 0x11), (0x21, 0x30), (0x21, 0x04),
                        (0x21, 0x01), (0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01),
                        (0x21, 0xEA), (0xA1, 0xFD)):
        bus.write(port, 1, value)
    return clock, pc, bus, out, events, wakes


def eoi(bus, vector):
    irq = vector - VECTOR_BASE
    if irq >= 8:
        bus.write(0xA0, 1, 0x60 + irq - 8)
        bus.write(0x20, 1, 0x62)
    else:
        bus.write(0x20, 1, 0x60 + irq)


def test_timer_tick_reaches_the_cpu_as_vector_0x30():
    clock, pc, bus, out, events, wakes = make()
    assert pc.next_deadline_ns() is None
    bus.write(0x43, 1, 0x34)
    bus.write(0x40, 1, 4773 & 0xFF)
    bus.write(0x40, 1, 4773 >> 8)
    due = pc.next_deadline_ns()
    assert due == -(-4773 * 10**9 // PIT_HZ)
    clock.set(due)
    assert not pc.has_interrupt()       # nothing until the run loop calls update
    pc.update(clock.now_ns())
    assert pc.has_interrupt()
    assert pc.acknowledge() == 0x30
    eoi(bus, 0x30)
    assert not pc.has_interrupt()


def test_serial_output_with_thre_interrupt_is_vector_0x34():
    clock, pc, bus, out, events, wakes = make()
    bus.write(0x3FC, 1, 0x0B)           # MCR: DTR, RTS, OUT2
    bus.write(0x3F9, 1, 0x02)           # IER: THRI
    assert pc.acknowledge() == 0x34
    assert bus.read(0x3FA, 1) & 0x0F == 0x02
    bus.write(0x3F8, 1, ord("A"))
    assert pc.next_deadline_ns() == 0   # a THRE interrupt is owed: update at once
    bus.write(0x3F9, 1, 0x00)
    eoi(bus, 0x34)
    pc.update(clock.now_ns())
    assert pc.next_deadline_ns() is None
    assert bytes(out) == b"A" and pc.uart.transmitted == b"A"
    assert not pc.has_interrupt()


def test_terminal_input_raises_irq4_after_update():
    clock, pc, bus, out, events, wakes = make()
    bus.write(0x3FC, 1, 0x0B)
    bus.write(0x3F9, 1, 0x01)           # IER: RDI
    pc.feed_input(b"ls\n")
    assert wakes == [1]
    pc.update(clock.now_ns())
    assert pc.acknowledge() == 0x34
    got = bytearray()
    while bus.read(0x3FD, 1) & 1:
        got.append(bus.read(0x3F8, 1))
    assert got == b"ls\n"


def test_sci_is_level_triggered_irq9_through_the_slave():
    clock, pc, bus, out, events, wakes = make()
    assert bus.read(0x4D1, 1) & 0x02    # the ELCR as firmware leaves it: IRQ 9 level
    bus.write(0x602, 2, 0x0001)         # TMR_EN
    due = pc.next_deadline_ns()         # bit 31 of the 32-bit PM timer flips
    assert due == -(-(1 << 31) * 10**9 // 3_579_545)
    pc.update(due)
    assert pc.acknowledge() == 0x39
    eoi(bus, 0x39)
    assert pc.acknowledge() == 0x39     # still asserted: level-triggered
    bus.write(0x600, 2, 0x0001)         # the handler clears TMR_STS
    eoi(bus, 0x39)
    assert not pc.has_interrupt()


def test_poweroff_and_reset_paths():
    clock, pc, bus, out, events, wakes = make()
    bus.write(0x604, 2, 5 << 10 | 1 << 13 | 1)
    bus.write(0xCF9, 1, 0x06)
    bus.write(0x64, 1, 0xFE)
    assert events == ["poweroff", "reset", "reset"]


def test_rtc_and_unclaimed_ports():
    clock, pc, bus, out, events, wakes = make()
    bus.write(0x70, 1, 0x09)
    assert bus.read(0x71, 1) == 0x23    # 1,700,000,000 s is 14 November 2023 UTC
    bus.write(0x70, 1, 0x32)
    assert bus.read(0x71, 1) == 0x20
    assert bus.read(0xCFC, 4) == 0xFFFFFFFF     # no PCI
    assert bus.read(0x2F8, 1) == 0xFF           # no COM2


def test_acpi_tables_describe_the_attached_ports():
    clock, pc, bus, out, events, wakes = make()
    blob, rsdp = pc.build_acpi(0xE0000)
    fadt = blob[blob.index(b"FACP"):]
    assert int.from_bytes(fadt[56:60], "little") == 0x600       # PM1a_EVT_BLK
    assert int.from_bytes(fadt[46:48], "little") == 9           # SCI_INT
    assert bus.read(0x604, 2) & 1                               # SCI_EN at that port


def test_attach_refuses_a_second_uart_at_com1():
    clock = ManualClock()
    bus = Bus("pio")
    bus.register(0x3F8, 8, Uart16550(lambda b: None))
    with pytest.raises(BusError):
        PcPlatform(clock, lambda b: None, lambda e: None).attach(bus)
