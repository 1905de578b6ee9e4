"""The 8259A pair driven through its ports the way Linux's i8259 driver drives it."""

from hv.vmm.bus import Bus
from hv.vmm.pic import PicPair

# Linux x86-64: ISA_IRQ_VECTOR(0) is FIRST_EXTERNAL_VECTOR + 0x10 = 0x30.
MASTER_BASE, SLAVE_BASE = 0x30, 0x38


def linux_init(auto_eoi=False):
    """init_8259A(): mask all, ICW1-4 on both chips, then the driver's cached masks."""
    pic = PicPair()
    bus = Bus("pio")
    bus.register(0x20, 2, pic.master)
    bus.register(0xA0, 2, pic.slave)
    bus.register(0x4D0, 2, pic.elcr)
    bus.write(0x21, 1, 0xFF)
    bus.write(0xA1, 1, 0xFF)
    bus.write(0x20, 1, 0x11)            # ICW1: edge, cascade, ICW4 follows
    bus.write(0x21, 1, MASTER_BASE)     # ICW2
    bus.write(0x21, 1, 0x04)            # ICW3: a slave on IR2
    bus.write(0x21, 1, 0x03 if auto_eoi else 0x01)  # ICW4: 8086 mode (+AEOI)
    bus.write(0xA0, 1, 0x11)
    bus.write(0xA1, 1, SLAVE_BASE)
    bus.write(0xA1, 1, 0x02)            # ICW3: slave identity 2
    bus.write(0xA1, 1, 0x01)
    bus.write(0x21, 1, 0xFF)            # ICW1 cleared the IMRs: restore the cached masks
    bus.write(0xA1, 1, 0xFF)
    return pic, bus


def unmask(bus, *irqs):
    master, slave = bus.read(0x21, 1), bus.read(0xA1, 1)
    for irq in irqs:
        if irq < 8:
            master &= ~(1 << irq)
        else:
            slave &= ~(1 << (irq - 8))
            master &= ~(1 << 2)
    bus.write(0x21, 1, master)
    bus.write(0xA1, 1, slave)


def read_isr(bus, port):
    bus.write(port, 1, 0x0B)            # OCW3: read ISR
    value = bus.read(port, 1)
    bus.write(port, 1, 0x0A)            # back to IRR
    return value


def test_probe_reads_back_the_mask():
    # probe_8259A writes 0xfb to the master's IMR and expects it back.
    pic, bus = linux_init()
    bus.write(0x21, 1, 0xFB)
    assert bus.read(0x21, 1) == 0xFB


def test_icw1_clears_the_mask():
    pic, bus = linux_init()
    bus.write(0x20, 1, 0x11)
    assert bus.read(0x21, 1) == 0


def test_after_init_everything_is_masked_and_nothing_pending():
    pic, bus = linux_init()
    assert bus.read(0x21, 1) == 0xFF and bus.read(0xA1, 1) == 0xFF
    pic.set_irq(0, True)
    assert not pic.has_interrupt()
    assert bus.read(0x20, 1) == 0x01    # IRR shows the masked request


def test_timer_and_serial_vectors_eoi_and_priority():
    pic, bus = linux_init()
    unmask(bus, 0, 4)
    pic.set_irq(4, True)
    pic.set_irq(0, True)
    assert pic.has_interrupt()
    assert pic.acknowledge() == MASTER_BASE + 0     # IRQ 0 outranks IRQ 4
    assert read_isr(bus, 0x20) == 0x01
    assert not pic.has_interrupt()                  # IRQ 4 waits behind IRQ 0 in service
    bus.write(0x20, 1, 0x60 + 0)                    # specific EOI, as mask_and_ack_8259A does
    assert pic.has_interrupt()
    assert pic.acknowledge() == MASTER_BASE + 4
    assert read_isr(bus, 0x20) == 0x10
    bus.write(0x20, 1, 0x20)                        # non-specific EOI
    assert read_isr(bus, 0x20) == 0
    assert not pic.has_interrupt()


def test_higher_priority_nests_over_lower_in_service():
    pic, bus = linux_init()
    unmask(bus, 0, 4)
    pic.set_irq(4, True)
    assert pic.acknowledge() == MASTER_BASE + 4
    pic.set_irq(0, True)
    assert pic.has_interrupt()
    assert pic.acknowledge() == MASTER_BASE + 0
    assert read_isr(bus, 0x20) == 0x11
    bus.write(0x20, 1, 0x20)                        # non-specific EOI ends the highest: IRQ 0
    assert read_isr(bus, 0x20) == 0x10


def test_edge_needs_a_new_rising_edge():
    pic, bus = linux_init()
    unmask(bus, 0)
    pic.set_irq(0, True)
    assert pic.acknowledge() == MASTER_BASE
    bus.write(0x20, 1, 0x60)
    pic.set_irq(0, True)                            # still high: no new edge
    assert not pic.has_interrupt()
    pic.set_irq(0, False)
    pic.set_irq(0, True)
    assert pic.acknowledge() == MASTER_BASE


def test_masking_holds_the_request_until_unmasked():
    pic, bus = linux_init()
    pic.set_irq(4, True)
    pic.set_irq(4, False)                           # an edge latched while masked
    assert not pic.has_interrupt()
    unmask(bus, 4)
    assert pic.acknowledge() == MASTER_BASE + 4


def test_slave_irq_through_the_cascade_and_both_eois():
    pic, bus = linux_init()
    unmask(bus, 8)
    pic.set_irq(8, True)
    assert pic.has_interrupt()
    assert pic.acknowledge() == SLAVE_BASE + 0
    assert read_isr(bus, 0x20) == 0x04 and read_isr(bus, 0xA0) == 0x01
    bus.write(0xA0, 1, 0x60 + 0)                    # specific EOI to the slave
    bus.write(0x20, 1, 0x60 + 2)                    # and to the master's IR2
    assert read_isr(bus, 0x20) == 0 and read_isr(bus, 0xA0) == 0
    assert not pic.has_interrupt()


def test_level_triggered_sci_through_elcr():
    pic, bus = linux_init()
    bus.write(0x4D1, 1, 0x02)                       # IRQ 9 level, as acpi_pic_sci_set_trigger
    assert bus.read(0x4D0, 2) == 0x0200
    unmask(bus, 9)
    pic.set_irq(9, True)
    assert pic.acknowledge() == SLAVE_BASE + 1
    bus.write(0xA0, 1, 0x61)
    bus.write(0x20, 1, 0x62)
    assert pic.has_interrupt()                      # still high: requested again after EOI
    assert pic.acknowledge() == SLAVE_BASE + 1
    bus.write(0xA0, 1, 0x61)
    bus.write(0x20, 1, 0x62)
    pic.set_irq(9, False)
    assert not pic.has_interrupt()


def test_elcr_cannot_make_timer_or_cascade_level():
    pic, bus = linux_init()
    bus.write(0x4D0, 2, 0xFFFF)
    assert bus.read(0x4D0, 2) == 0xDEF8


def test_vanished_level_request_is_spurious_irq7():
    pic, bus = linux_init()
    pic.set_level_triggered(5)
    unmask(bus, 5)
    pic.set_irq(5, True)
    assert pic.has_interrupt()
    pic.set_irq(5, False)                           # gone between INTR and INTA
    assert pic.acknowledge() == MASTER_BASE + 7
    assert read_isr(bus, 0x20) == 0                 # a spurious IRQ 7 sets no ISR bit


def test_vanished_slave_request_is_spurious_irq15_with_master_ir2_in_service():
    pic, bus = linux_init()
    pic.set_level_triggered(10)
    unmask(bus, 10)
    pic.set_irq(10, True)
    assert pic.has_interrupt()
    pic.set_irq(10, False)
    assert pic.acknowledge() == SLAVE_BASE + 7
    assert read_isr(bus, 0xA0) == 0 and read_isr(bus, 0x20) == 0x04


def test_acknowledge_with_nothing_pending_is_spurious():
    pic, bus = linux_init()
    assert not pic.has_interrupt()
    assert pic.acknowledge() == MASTER_BASE + 7


def test_auto_eoi_leaves_nothing_in_service():
    pic, bus = linux_init(auto_eoi=True)
    unmask(bus, 0, 4)
    pic.set_irq(4, True)
    assert pic.acknowledge() == MASTER_BASE + 4
    assert read_isr(bus, 0x20) == 0
    pic.set_irq(0, True)
    assert pic.acknowledge() == MASTER_BASE


def test_rotating_priority_makes_the_served_irq_lowest():
    pic, bus = linux_init()
    unmask(bus, 0, 4)
    pic.set_irq(0, True)
    assert pic.acknowledge() == MASTER_BASE
    bus.write(0x20, 1, 0xA0)                        # rotate on non-specific EOI: IR0 lowest
    pic.set_irq(0, False)
    pic.set_irq(0, True)
    pic.set_irq(4, True)
    assert pic.acknowledge() == MASTER_BASE + 4


def test_set_priority_command():
    pic, bus = linux_init()
    unmask(bus, 1, 6)
    bus.write(0x20, 1, 0xC0 + 5)                    # IR5 lowest, so IR6 is now the highest
    pic.set_irq(1, True)
    pic.set_irq(6, True)
    assert pic.acknowledge() == MASTER_BASE + 6


def test_poll_mode_reads_and_acknowledges():
    pic, bus = linux_init()
    unmask(bus, 3)
    pic.set_irq(3, True)
    bus.write(0x20, 1, 0x0C)                        # OCW3 poll
    assert bus.read(0x20, 1) == 0x83
    assert read_isr(bus, 0x20) == 0x08
    bus.write(0x20, 1, 0x0C)
    assert bus.read(0x20, 1) == 0x00


def test_special_mask_mode_lets_lower_levels_in():
    pic, bus = linux_init()
    unmask(bus, 2, 3, 5)
    pic.set_irq(3, True)
    assert pic.acknowledge() == MASTER_BASE + 3
    bus.write(0x21, 1, bus.read(0x21, 1) | 0x08)    # mask the level in service
    pic.set_irq(5, True)
    assert not pic.has_interrupt()
    bus.write(0x20, 1, 0x68)                        # OCW3: set special mask mode
    assert pic.acknowledge() == MASTER_BASE + 5
