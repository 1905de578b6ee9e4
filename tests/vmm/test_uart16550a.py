"""The 16550A driven the way Linux's 8250 driver drives COM1 (drivers/tty/serial/8250)."""

import threading

from hv.vmm.bus import Bus
from hv.vmm.uart import WIRE_LIMIT, Uart16550A

COM1 = 0x3F8
THR, IER, IIR, FCR, LCR, MCR, LSR, MSR, SCR = 0, 1, 2, 2, 3, 4, 5, 6, 7


class Port:
    def __init__(self):
        self.out = bytearray()
        self.levels = []
        self.uart = Uart16550A(self.out.extend, irq=self.levels.append)
        self.bus = Bus("pio")
        self.bus.register(COM1, 8, self.uart)

    def rd(self, reg):
        return self.bus.read(COM1 + reg, 1)

    def wr(self, reg, value):
        self.bus.write(COM1 + reg, 1, value)

    @property
    def line(self):
        return bool(self.levels) and self.levels[-1]


def startup(p):
    """serial8250_do_startup's order: clear FIFOs, 8N1, OUT2|DTR|RTS, enable RX interrupts."""
    p.wr(FCR, 0x01)
    p.wr(FCR, 0x07)
    p.wr(FCR, 0x00)
    p.rd(LSR), p.rd(THR), p.rd(IIR), p.rd(MSR)
    p.wr(LCR, 0x03)
    p.wr(MCR, 0x0B)
    p.wr(FCR, 0x81)                     # 16550A: FIFO on, RX trigger 8
    p.wr(IER, 0x05)                     # RLSI | RDI


def test_autoconfig_identifies_a_16550a():
    p = Port()
    # Scratch test on IER: 0 reads back 0, 0x0f reads back 0x0f.
    p.wr(IER, 0)
    assert p.rd(IER) & 0x0F == 0
    p.wr(IER, 0x0F)
    assert p.rd(IER) & 0x0F == 0x0F
    p.wr(IER, 0)
    # Loopback test: LOOP|OUT2|RTS must read as DCD|CTS.
    p.wr(MCR, 0x1A)
    assert p.rd(MSR) & 0xF0 == 0x90
    p.wr(MCR, 0)
    # FIFO probe: after enabling the FIFOs IIR bits 7:6 read 0b11 (a 16550A).
    p.wr(LCR, 0)
    p.wr(FCR, 0x01)
    assert p.rd(IIR) >> 6 == 3
    # EFR probes (LCR 0x80, 0xBF) read IIR here, which is not 0: no 16650/16750 extensions.
    p.wr(LCR, 0x80)
    assert p.rd(IIR) != 0
    p.wr(LCR, 0xBF)
    assert p.rd(IIR) != 0
    p.wr(LCR, 0)
    # 64-byte FIFO probe (FCR bit 5): IIR bit 5 stays clear, so not a 16750.
    p.wr(FCR, 0x21)
    assert p.rd(IIR) >> 5 == 6
    # IER bit 6 (XScale UUE) does not stick.
    p.wr(IER, 0x40)
    assert not p.rd(IER) & 0x40


def test_thre_is_reasserted_each_time_thri_is_enabled():
    # The UART_BUG_THRE test: both IIR reads must show the THRE interrupt.
    p = Port()
    startup(p)
    p.wr(IER, 0x02)
    iir1 = p.rd(IIR)
    p.wr(IER, 0)
    p.wr(IER, 0x02)
    iir = p.rd(IIR)
    p.wr(IER, 0)
    assert iir1 == 0xC2 and iir == 0xC2


def test_txen_test_sees_thre_interrupt():
    # serial8250_do_startup's TXEN check: IER=THRI, then LSR shows TEMT and IIR an interrupt.
    p = Port()
    startup(p)
    p.wr(IER, 0x02)
    assert p.rd(LSR) & 0x60 == 0x60
    assert not p.rd(IIR) & 0x01


def test_transmit_path_with_thri_drives_irq4():
    p = Port()
    startup(p)
    assert not p.line
    p.wr(IER, 0x07)                     # __start_tx sets THRI
    assert p.line                       # THR empty and THRI enabled: the IRQ rises
    assert p.rd(IIR) == 0xC2            # the handler reads IIR: THRE acknowledged
    assert not p.line
    for b in b"hello":
        p.wr(THR, b)                    # serial8250_tx_chars
    assert bytes(p.out) == b"hello"
    assert p.uart.transmitted == b"hello" and p.uart.sent == 5
    assert not p.line and p.uart.tx_busy
    assert p.rd(IIR) == 0xC2            # the handler's next look: THRE, more room
    p.wr(THR, ord("!"))
    p.wr(IER, 0x05)                     # circ buffer empty: __stop_tx clears THRI
    assert p.rd(IIR) == 0xC1
    assert p.levels.count(True) == 1    # one rising edge for the whole burst
    p.uart.sync()
    assert not p.line


def test_thre_after_a_write_outside_the_handler_comes_at_sync():
    p = Port()
    startup(p)
    p.wr(IER, 0x07)
    p.rd(IIR)                           # acknowledged
    p.wr(THR, ord("x"))                 # a write with THRI on and no IIR read after it
    assert not p.line and p.uart.tx_busy
    p.uart.sync()                       # the VMM's next update: the byte has gone
    assert p.line and not p.uart.tx_busy
    assert p.rd(IIR) == 0xC2


def test_writing_thr_clears_a_shown_thre_until_the_byte_is_gone():
    p = Port()
    startup(p)
    p.wr(IER, 0x02)
    assert p.rd(IIR) == 0xC2
    assert p.rd(IIR) == 0xC1            # acknowledged by the first read
    p.wr(THR, 0x41)
    assert p.rd(IIR) == 0xC2            # the byte left: THRE again


def test_out2_gates_the_interrupt_line():
    p = Port()
    p.wr(IER, 0x02)
    assert not p.line                   # MCR.OUT2 clear: the PC's IRQ buffer is off
    assert p.rd(IIR) == 0x02            # but the UART itself has the interrupt (no FIFOs)
    p.wr(IER, 0)
    p.wr(MCR, 0x08)
    p.wr(IER, 0x02)
    assert p.line


def test_receive_fifo_trigger_timeout_and_lsr_dr():
    p = Port()
    startup(p)                          # trigger level 8
    p.uart.feed(b"abc")
    assert not p.line                   # fed bytes arrive when the vCPU side syncs
    p.uart.sync()
    assert p.line
    assert p.rd(IIR) == 0xCC            # below the trigger: character timeout
    assert p.rd(LSR) & 0x01
    got = bytearray()
    while p.rd(LSR) & 0x01:
        got.append(p.rd(THR))
    assert got == b"abc"
    assert not p.line and p.rd(IIR) == 0xC1
    p.uart.feed(b"0123456789")
    p.uart.sync()
    assert p.rd(IIR) == 0xC4            # at or above the trigger: received data available


def test_long_paste_arrives_whole_through_the_16_byte_fifo():
    p = Port()
    startup(p)
    data = bytes(range(256)) * 4
    p.uart.feed(data)
    got = bytearray()
    while p.rd(LSR) & 0x01:
        got.append(p.rd(THR))
    assert bytes(got) == data
    assert not p.rd(LSR) & 0x02


def test_wire_overflow_sets_oe_once_and_drops():
    p = Port()
    startup(p)
    p.uart.feed(b"x" * (WIRE_LIMIT + 100))
    assert p.uart.input_dropped == 100
    p.uart.sync()
    assert p.rd(IIR) == 0xC6            # line status outranks received data
    lsr = p.rd(LSR)
    assert lsr & 0x02 and lsr & 0x01
    assert not p.rd(LSR) & 0x02         # reading LSR cleared OE
    n = 0
    while p.rd(LSR) & 0x01:
        p.rd(THR)
        n += 1
    assert n == WIRE_LIMIT


def test_non_fifo_mode_holds_one_byte():
    p = Port()
    p.wr(MCR, 0x08)
    p.wr(IER, 0x01)
    p.uart.feed(b"xy")
    p.uart.sync()
    assert p.rd(IIR) == 0x04            # no FIFO bits, received data available
    assert p.rd(THR) == ord("x")
    assert p.rd(THR) == ord("y")        # the next byte came off the wire after the first read
    assert not p.rd(LSR) & 0x01


def test_loopback_returns_transmitted_bytes_and_keeps_them_off_the_line():
    p = Port()
    p.wr(FCR, 0x01)
    p.wr(MCR, 0x10)
    for b in b"loop":
        p.wr(THR, b)
    assert bytes(p.out) == b"" and p.uart.sent == 0
    got = bytearray()
    while p.rd(LSR) & 0x01:
        got.append(p.rd(THR))
    assert got == b"loop"


def test_loopback_overflows_the_fifo():
    p = Port()
    p.wr(FCR, 0x01)
    p.wr(MCR, 0x10)
    for b in range(17):
        p.wr(THR, b)
    assert p.rd(LSR) & 0x03 == 0x03
    assert [p.rd(THR) for _ in range(16)] == list(range(16))


def test_loopback_msr_follows_mcr_with_deltas():
    p = Port()
    p.wr(MCR, 0x10 | 0x01 | 0x04)       # LOOP, DTR, OUT1
    # Lines outside loopback were DCD|DSR|CTS: CTS and DCD dropped, DSR stays, RI rose.
    msr = p.rd(MSR)
    assert msr & 0xF0 == 0x20 | 0x40
    assert msr & 0x0F == 0x01 | 0x08
    p.wr(MCR, 0x10 | 0x01)              # OUT1 off: RI's trailing edge
    assert p.rd(MSR) == 0x20 | 0x04
    assert p.rd(MSR) == 0x20            # deltas clear on read


def test_modem_status_interrupt_is_lowest():
    p = Port()
    p.wr(MCR, 0x10 | 0x02)              # loopback, RTS: delta bits set
    p.wr(IER, 0x0A)                     # MSI and THRI
    assert p.rd(IIR) == 0x02            # THRE outranks modem status
    assert p.rd(IIR) == 0x00            # then modem status
    p.rd(MSR)
    assert p.rd(IIR) == 0x01
    assert not p.line                   # loopback keeps the PC's interrupt line off


def test_divisor_latch_and_scratch():
    p = Port()
    p.wr(LCR, 0x83)
    p.wr(0, 0x01)                       # 115200 baud
    p.wr(1, 0x00)
    assert p.rd(0) == 0x01 and p.rd(1) == 0x00
    p.wr(LCR, 0x03)
    assert p.rd(LCR) == 0x03
    assert p.uart.sent == 0             # DLL writes are not data
    p.wr(SCR, 0x5A)
    assert p.rd(SCR) == 0x5A


def test_feed_from_another_thread():
    p = Port()
    startup(p)
    chunks = [bytes([i]) * 7 for i in range(100)]

    def typist():
        for c in chunks:
            p.uart.feed(c)

    t = threading.Thread(target=typist)
    t.start()
    got = bytearray()
    while t.is_alive() or p.rd(LSR) & 0x01:
        while p.rd(LSR) & 0x01:
            got.append(p.rd(THR))
    t.join()
    assert bytes(got) == b"".join(chunks)
