"""A 16550A UART with interrupts, FIFOs, loopback and terminal input: what Linux's 8250 needs.

The small guests poll hv.vmm.devices.Uart16550; a stock Linux kernel needs the interrupt side:
its tty layer only moves output when the transmit-holding-register-empty (THRE) interrupt fires,
its autoconfig probes the FIFO bits of IIR and the loopback wiring of MSR, and its startup checks
that THRE is raised again each time IER.THRI is set (or it falls back to a polling timer).

Transmission takes no guest time, but its THRE interrupt comes at the next look: a byte written
to THR is on the line at once; the interrupt saying so is raised at the guest's next IIR or LSR
read, or at the VMM's next `sync` (`tx_busy` says one is owed), not at the write. So Linux's
interrupt handler, which writes 16 bytes and reads IIR again, drains its whole buffer in one
interrupt, and stopping THRI after the last byte leaves no stray edge behind. LSR always shows
THRE and TEMT.
Input is paced by the VMM instead: `feed` (any thread) queues bytes on the "wire"; they enter the
16-byte receive FIFO as it has room, each time the vCPU thread touches the UART or calls `sync`.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from hv.vmm.devices import SERIAL_TAIL, Uart16550

__all__ = ["Uart16550A", "WIRE_LIMIT"]

# Bytes fed but not yet in the FIFO. Beyond this the terminal outruns the guest: drop, flag OE.
WIRE_LIMIT = 4096
FIFO_SIZE = 16

# Register offsets (DLAB = 0)
RBR_THR, IER, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)

IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 0x01, 0x02, 0x04, 0x08

IIR_NO_INT, IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI, IIR_RX_TIMEOUT = 0x01, 0x00, 0x02, 0x04, 0x06, 0x0C
IIR_FIFO_ENABLED = 0xC0

FCR_ENABLE, FCR_CLEAR_RX, FCR_CLEAR_TX = 0x01, 0x02, 0x04
RX_TRIGGER = (1, 4, 8, 14)      # FCR bits 7:6

LCR_DLAB = 0x80

MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10

LSR_DR, LSR_OE, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x20, 0x40

MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
# The far end of the line, outside loopback: a terminal that is there and ready.
MSR_LINES_IDLE = MSR_DCD | MSR_DSR | MSR_CTS


class Uart16550A(Uart16550):
    """COM-port registers at offsets 0-7; `irq(level)` is the chip's INTR gated by MCR.OUT2.

    Output goes to `out` and the remembered tail exactly as for Uart16550.
    """

    def __init__(self, out: Callable[[bytes], None], irq: Callable[[bool], None] | None = None,
                 keep: int = SERIAL_TAIL):
        super().__init__(out, keep)
        self._irq = irq
        self._irq_level = False
        self._ier = self._lcr = self._mcr = self._scr = 0
        self._fifo_enabled = False
        self._rx_trigger = 1
        self._rx: deque[int] = deque()
        self._overrun = False           # LSR.OE until LSR is read
        self._thre_pending = False
        self._tx_busy = False           # a byte was written; its THRE interrupt is still owed
        self._msr_delta = 0
        self._wire = bytearray()        # fed bytes not yet received; guarded by _wire_lock
        self._wire_overrun = False
        self._wire_lock = threading.Lock()
        self.input_dropped = 0          # fed bytes lost to a full wire

    # -- terminal input ------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Queue terminal input for the receiver (safe from any thread)."""
        with self._wire_lock:
            room = WIRE_LIMIT - len(self._wire)
            self._wire += data[:room]
            if len(data) > room:
                self.input_dropped += len(data) - room
                self._wire_overrun = True

    def sync(self) -> None:
        """Move waiting input into the receive FIFO, complete transmissions, update the line
        (vCPU thread)."""
        self._finish_tx()
        self._receive_from_wire()
        self._update_irq()

    @property
    def tx_busy(self) -> bool:
        """A THRE interrupt is owed: the VMM should `sync` soon even if the guest sleeps."""
        return self._tx_busy

    def _finish_tx(self) -> None:
        if self._tx_busy:
            self._tx_busy = False
            self._thre_pending = True

    def _rx_capacity(self) -> int:
        return FIFO_SIZE if self._fifo_enabled else 1

    def _receive_from_wire(self) -> None:
        with self._wire_lock:
            if self._wire_overrun:
                self._overrun = True
                self._wire_overrun = False
            if self._mcr & MCR_LOOP or not self._wire:
                return                  # in loopback the receiver hears only the transmitter
            n = min(self._rx_capacity() - len(self._rx), len(self._wire))
            if n > 0:
                self._rx.extend(self._wire[:n])
                del self._wire[:n]

    def _receive(self, value: int) -> None:
        if len(self._rx) >= self._rx_capacity():
            self._overrun = True        # the FIFO (or RBR) is full: the new byte is lost
        else:
            self._rx.append(value)

    # -- interrupts ------------------------------------------------------------------------------

    def _interrupt_id(self) -> int:
        """The highest-priority pending and enabled source, as IIR bits 3:0."""
        ier = self._ier
        if ier & IER_RLSI and self._overrun:
            return IIR_RLSI
        if ier & IER_RDI and self._rx:
            if self._fifo_enabled and len(self._rx) < self._rx_trigger:
                return IIR_RX_TIMEOUT   # below the trigger level: the character timeout
            return IIR_RDI
        if ier & IER_THRI and self._thre_pending:
            return IIR_THRI
        if ier & IER_MSI and self._msr_delta:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        # On a PC, OUT2 enables the UART's interrupt buffer; loopback forces OUT2 inactive.
        level = (self._interrupt_id() != IIR_NO_INT
                 and self._mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2)
        if level != self._irq_level:
            self._irq_level = level
            if self._irq is not None:
                self._irq(level)

    @property
    def irq_level(self) -> bool:
        return self._irq_level

    # -- modem lines -------------------------------------------------------------------------------

    def _msr_lines(self) -> int:
        mcr = self._mcr
        if not mcr & MCR_LOOP:
            return MSR_LINES_IDLE
        # Loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
        return ((MSR_DSR if mcr & MCR_DTR else 0) | (MSR_CTS if mcr & MCR_RTS else 0)
                | (MSR_RI if mcr & MCR_OUT1 else 0) | (MSR_DCD if mcr & MCR_OUT2 else 0))

    def _set_mcr(self, value: int) -> None:
        before = self._msr_lines()
        self._mcr = value & 0x1F
        after = self._msr_lines()
        changed = before ^ after
        delta = 0
        if changed & MSR_CTS:
            delta |= MSR_DCTS
        if changed & MSR_DSR:
            delta |= MSR_DDSR
        if changed & MSR_DCD:
            delta |= MSR_DDCD
        if before & MSR_RI and not after & MSR_RI:
            delta |= MSR_TERI           # RI reports its trailing edge only
        self._msr_delta |= delta

    # -- the registers -----------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        self._receive_from_wire()
        value = self._read(offset)
        self._update_irq()
        return value

    def _read(self, offset: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if offset == RBR_THR:
            if dlab:
                return self._dll
            value = self._rx.popleft() if self._rx else 0
            self._receive_from_wire()
            return value
        if offset == IER:
            return self._dlm if dlab else self._ier
        if offset == IIR_FCR:
            self._finish_tx()
            iid = self._interrupt_id()
            if iid == IIR_THRI:
                self._thre_pending = False  # reading IIR acknowledges THRE when it is shown
            return iid | (IIR_FIFO_ENABLED if self._fifo_enabled else 0)
        if offset == LCR:
            return self._lcr
        if offset == MCR:
            return self._mcr
        if offset == LSR:
            self._finish_tx()
            value = LSR_THRE | LSR_TEMT | (LSR_DR if self._rx else 0) \
                | (LSR_OE if self._overrun else 0)
            self._overrun = False
            return value
        if offset == MSR:
            value = self._msr_lines() | self._msr_delta
            self._msr_delta = 0
            return value
        return self._scr

    def write(self, offset: int, size: int, value: int) -> None:
        self._receive_from_wire()
        self._write(offset, value & 0xFF)
        self._update_irq()

    def _write(self, offset: int, value: int) -> None:
        dlab = self._lcr & LCR_DLAB
        if offset == RBR_THR:
            if dlab:
                self._dll = value
                return
            if self._mcr & MCR_LOOP:
                self._receive(value)
            else:
                self._transmit(value)
            self._thre_pending = False  # writing THR acknowledges THRE...
            self._tx_busy = True        # ...until the byte is seen to have gone
        elif offset == IER:
            if dlab:
                self._dlm = value
                return
            if value & IER_THRI and not self._ier & IER_THRI and not self._tx_busy:
                self._thre_pending = True   # enabling THRI with THR empty raises it
            self._ier = value & 0x0F
        elif offset == IIR_FCR:
            self._write_fcr(value)
        elif offset == LCR:
            self._lcr = value
        elif offset == MCR:
            self._set_mcr(value)
            self._receive_from_wire()   # leaving loopback lets the wire in again
        elif offset == SCR:
            self._scr = value
        # LSR and MSR writes (factory test) are ignored.

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE)
        if enable != self._fifo_enabled:
            self._rx.clear()            # switching FIFO mode empties both FIFOs
        self._fifo_enabled = enable
        if not enable:
            return                      # the other bits need the FIFOs enabled
        if value & FCR_CLEAR_RX:
            self._rx.clear()
        self._rx_trigger = RX_TRIGGER[value >> 6]
        self._receive_from_wire()
