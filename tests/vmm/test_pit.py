"""The 8254 and port 0x61, programmed the way Linux's i8253 clockevent and TSC calibration do."""

import math
from fractions import Fraction

from hv.vmm.bus import Bus
from hv.vmm.clock import ManualClock
from hv.vmm.pit import Pit8254, SystemControlPortB

HZ = 1_193_182                      # the 8254's input clock on a PC (14.31818 MHz / 12)
LATCH = round(HZ / 250)             # Linux's PIT_LATCH at HZ=250: 4773


def tick_of(ns):
    return ns * HZ // 10**9


def ns_of(tick):
    return math.ceil(Fraction(tick * 10**9, HZ))


def make(start_ns=0):
    clock = ManualClock(start_ns)
    edges = []
    pit = Pit8254(clock, lambda line, level: edges.append((line, level)))
    bus = Bus("pio")
    bus.register(0x40, 4, pit)
    bus.register(0x61, 1, SystemControlPortB(clock, pit))
    return clock, pit, bus, edges


def rises(edges):
    return sum(1 for line, level in edges if line == 0 and level)


def test_no_deadline_before_programming():
    clock, pit, bus, edges = make()
    assert pit.next_deadline_ns() is None
    pit.update(10**9)
    assert edges == []


def test_periodic_mode2_deadlines_and_irq0_edges():
    t0 = 1_000_000
    clock, pit, bus, edges = make(t0)
    bus.write(0x43, 1, 0x34)                    # ch0, LSB then MSB, mode 2, binary
    bus.write(0x40, 1, LATCH & 0xFF)
    bus.write(0x40, 1, LATCH >> 8)
    first = ns_of(tick_of(t0) + LATCH)
    assert pit.next_deadline_ns() == first
    pit.update(first - 1)
    assert rises(edges) == 0
    pit.update(first)
    assert edges == [(0, True), (0, False)]     # one edge: high then low again
    assert pit.next_deadline_ns() == ns_of(tick_of(t0) + 2 * LATCH)
    # Ten periods missed at once coalesce into one edge; the schedule stays on the grid.
    late = ns_of(tick_of(t0) + 12 * LATCH) + 5
    pit.update(late)
    assert rises(edges) == 2
    assert pit.next_deadline_ns() == ns_of(tick_of(t0) + 13 * LATCH)


def test_oneshot_mode4_as_linux_nohz_programs_it():
    clock, pit, bus, edges = make(5_000_000)
    bus.write(0x43, 1, 0x38)                    # pit_set_oneshot: ch0, LSB/MSB, mode 4
    assert pit.next_deadline_ns() is None
    clock.advance(123_456)
    delta = 1000
    bus.write(0x40, 1, delta & 0xFF)            # pit_next_event
    bus.write(0x40, 1, delta >> 8)
    loaded = tick_of(clock.now_ns())
    # Mode 4: OUT strobes low for one CLK at count 0 and rises again one CLK later.
    due = ns_of(loaded + delta + 1)
    assert pit.next_deadline_ns() == due
    pit.update(due)
    assert rises(edges) == 1
    assert pit.next_deadline_ns() is None       # one shot only
    pit.update(due + 10**9)
    assert rises(edges) == 1


def test_oneshot_mode0_interrupt_on_terminal_count():
    clock, pit, bus, edges = make()
    bus.write(0x43, 1, 0x30)                    # ch0, LSB/MSB, mode 0
    bus.write(0x40, 1, 0x00)
    assert pit.next_deadline_ns() is None       # the first byte does not start the count
    bus.write(0x40, 1, 0x10)                    # 0x1000 ticks
    due = ns_of(0x1000)
    assert pit.next_deadline_ns() == due
    pit.update(due)
    assert rises(edges) == 1
    assert pit.next_deadline_ns() is None


def test_shutdown_writes_mode0_with_count_zero_meaning_65536():
    clock, pit, bus, edges = make()
    bus.write(0x43, 1, 0x30)
    bus.write(0x40, 1, 0)
    bus.write(0x40, 1, 0)
    assert pit.next_deadline_ns() == ns_of(65536)


def test_square_wave_mode3_period():
    clock, pit, bus, edges = make()
    bus.write(0x43, 1, 0x36)                    # ch0, LSB/MSB, mode 3 (what a BIOS leaves)
    bus.write(0x40, 1, 0)
    bus.write(0x40, 1, 0)
    assert pit.next_deadline_ns() == ns_of(65536)
    pit.update(ns_of(65536))
    assert pit.next_deadline_ns() == ns_of(2 * 65536)


def test_counter_latch_reads_the_count_at_latch_time():
    clock, pit, bus, edges = make()
    bus.write(0x43, 1, 0x34)
    bus.write(0x40, 1, LATCH & 0xFF)
    bus.write(0x40, 1, LATCH >> 8)
    clock.set(ns_of(1000))                      # 1000 CLKs later
    bus.write(0x43, 1, 0x00)                    # latch channel 0
    clock.advance(10**6)                        # the latched value does not move
    value = bus.read(0x40, 1) | bus.read(0x40, 1) << 8
    assert value == LATCH - 1000


def test_readback_status_and_count():
    clock, pit, bus, edges = make()
    bus.write(0x43, 1, 0x34)
    bus.write(0x40, 1, LATCH & 0xFF)
    bus.write(0x40, 1, LATCH >> 8)
    clock.set(ns_of(10))
    bus.write(0x43, 1, 0xC2)                    # read-back: count and status of channel 0
    status = bus.read(0x40, 1)
    # OUT high (mode 2 between strobes), count loaded (null count 0), RW=3, mode 2, binary.
    assert status == 0x80 | (3 << 4) | (2 << 1)
    assert bus.read(0x40, 1) | bus.read(0x40, 1) << 8 == LATCH - 10


def test_readback_status_before_count_is_written_shows_null_count():
    clock, pit, bus, edges = make()
    bus.write(0x43, 1, 0xB0)                    # ch2, LSB/MSB, mode 0
    bus.write(0x43, 1, 0xE8)                    # read-back status only (bit 5 set), channel 2
    assert bus.read(0x42, 1) == 0x40 | 0x30


def test_lsb_only_and_msb_only_access():
    clock, pit, bus, edges = make()
    bus.write(0x43, 1, 0x54)                    # ch1, LSB only, mode 2
    bus.write(0x41, 1, 18)                      # what a BIOS writes for DRAM refresh
    clock.set(ns_of(5))
    assert bus.read(0x41, 1) == 13
    bus.write(0x43, 1, 0x64)                    # ch1, MSB only, mode 2: count 0x0200
    bus.write(0x41, 1, 0x02)
    clock.advance(ns_of(0x100 + 5) - ns_of(5))
    assert bus.read(0x41, 1) == 0x01


def test_channel2_gate_and_out_at_port_61_like_pit_calibrate_tsc():
    clock, pit, bus, edges = make(7_000_000)
    bus.write(0x61, 1, (bus.read(0x61, 1) & ~0x02) | 0x01)  # gate high, speaker off
    bus.write(0x43, 1, 0xB0)                    # ch2, LSB/MSB, mode 0
    latch = HZ // 20                            # CAL_LATCH for a 50 ms calibration
    bus.write(0x42, 1, latch & 0xFF)
    bus.write(0x42, 1, latch >> 8)
    loaded = tick_of(clock.now_ns())
    assert not bus.read(0x61, 1) & 0x20         # OUT low while counting
    clock.set(ns_of(loaded + latch) - 1)
    assert not bus.read(0x61, 1) & 0x20
    clock.set(ns_of(loaded + latch))
    assert bus.read(0x61, 1) & 0x20             # terminal count: OUT high
    assert rises(edges) == 0                    # channel 2 raises no IRQ


def test_quick_pit_calibrate_reads_the_running_msb():
    clock, pit, bus, edges = make()
    bus.write(0x61, 1, 0x01)
    bus.write(0x43, 1, 0xB0)
    bus.write(0x42, 1, 0xFF)
    bus.write(0x42, 1, 0xFF)
    for k in (1, 2, 40):
        clock.set(ns_of(256 * k + 3))
        bus.read(0x42, 1)                       # LSB, then
        assert bus.read(0x42, 1) == 0xFF - k    # the MSB, without a latch


def test_gate_low_holds_mode0_count():
    clock, pit, bus, edges = make()
    bus.write(0x61, 1, 0x01)
    bus.write(0x43, 1, 0xB0)
    bus.write(0x42, 1, 0x00)
    bus.write(0x42, 1, 0x10)
    clock.set(ns_of(0x100))
    bus.write(0x61, 1, 0x00)                    # gate low: counting pauses
    clock.set(ns_of(0x900))
    assert bus.read(0x42, 1) | bus.read(0x42, 1) << 8 == 0x0F00
    bus.write(0x61, 1, 0x01)
    clock.set(ns_of(0x900 + 0x200))
    assert bus.read(0x42, 1) | bus.read(0x42, 1) << 8 == 0x0D00


def test_port61_refresh_bit_toggles_and_stores_low_bits():
    clock, pit, bus, edges = make()
    bus.write(0x61, 1, 0x0E)
    first = bus.read(0x61, 1)
    assert first & 0x0F == 0x0E
    clock.advance(15_085)                       # a refresh half-period
    assert (bus.read(0x61, 1) ^ first) & 0x10


def test_oneshot_mode4_rearms_with_each_count_written():
    clock, pit, bus, edges = make()
    bus.write(0x43, 1, 0x38)
    for delta in (500, 20, 65535):
        bus.write(0x40, 1, delta & 0xFF)
        bus.write(0x40, 1, delta >> 8)
        due = ns_of(tick_of(clock.now_ns()) + delta + 1)
        assert pit.next_deadline_ns() == due
        clock.set(due)
        pit.update(due)
    assert rises(edges) == 3
