"""The 8042 as Linux's i8042 probe and its reboot path use it."""

from hv.vmm.bus import Bus
from hv.vmm.i8042 import I8042


def make():
    events = []
    kbc = I8042(events.append)
    bus = Bus("pio")
    bus.register(0x60, 1, kbc.data_port)
    bus.register(0x64, 1, kbc.command_port)
    return kbc, bus, events


def command(bus, cmd):
    bus.write(0x64, 1, cmd)
    assert bus.read(0x64, 1) & 0x01, "an answer is waiting (OBF)"
    return bus.read(0x60, 1)


def test_idle_status_has_no_data():
    kbc, bus, events = make()
    status = bus.read(0x64, 1)
    assert not status & 0x01 and not status & 0x02  # output empty, input empty
    assert status & 0x04                            # system flag: POST passed


def test_self_test_and_port_tests():
    kbc, bus, events = make()
    assert command(bus, 0xAA) == 0x55
    assert command(bus, 0xAB) == 0x00
    assert command(bus, 0xA9) == 0x00
    assert not bus.read(0x64, 1) & 0x01


def test_configuration_byte_round_trip():
    kbc, bus, events = make()
    ctb = command(bus, 0x20)
    bus.write(0x64, 1, 0x60)
    bus.write(0x60, 1, ctb & ~0x03 | 0x30)          # i8042 driver: interrupts off, ports off
    assert command(bus, 0x20) == ctb & ~0x03 | 0x30
    bus.write(0x64, 1, 0xAE)
    bus.write(0x64, 1, 0xA8)
    assert command(bus, 0x20) & 0x30 == 0


def test_aux_loop_answers_on_the_aux_side():
    kbc, bus, events = make()
    bus.write(0x64, 1, 0xD3)
    bus.write(0x60, 1, 0x5A)
    assert bus.read(0x64, 1) & 0x21 == 0x21
    assert bus.read(0x60, 1) == 0x5A


def test_fe_on_the_command_port_is_reset():
    kbc, bus, events = make()
    bus.write(0x64, 1, 0xFE)
    assert events == ["reset"]
    bus.write(0x64, 1, 0xFF)                        # pulses no line
    assert events == ["reset"]


def test_output_port_write_with_reset_low_is_reset():
    kbc, bus, events = make()
    assert command(bus, 0xD0) & 0x01
    bus.write(0x64, 1, 0xD1)
    bus.write(0x60, 1, 0x02)
    assert events == ["reset"]


def test_bytes_for_an_absent_keyboard_vanish():
    kbc, bus, events = make()
    bus.write(0x60, 1, 0xFF)                        # keyboard reset: nobody answers
    assert not bus.read(0x64, 1) & 0x01
    assert events == []
