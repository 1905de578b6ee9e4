"""The PC's pair of 8259A programmable interrupt controllers, with the ELCR trigger registers.

Master at ports 0x20/0x21 (IRQ 0-7), slave at 0xA0/0xA1 (IRQ 8-15) cascaded on the master's IR2;
the edge/level control registers at 0x4D0/0x4D1 (PIIX/ICH), which a PC's firmware and Linux's ACPI
code use to make the SCI level-triggered.

The names follow Intel's 8259A datasheet: IRR (requests), ISR (in service), IMR (masks), ICW1-4
(the initialization sequence), OCW1-3 (masks, EOI and priority commands, register reads).
"""

from __future__ import annotations

__all__ = ["Pic8259", "PicPair", "Elcr"]

# ICW1 (command port, bit 4 set)
ICW1_IC4 = 0x01     # ICW4 follows
ICW1_SNGL = 0x02    # single PIC, no ICW3
ICW1_LTIM = 0x08    # level-triggered inputs (on a PC the ELCR decides instead)
ICW1_INIT = 0x10
# ICW4
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10    # special fully nested mode
# OCW3 (command port, bits 4:3 = 01)
OCW3_RIS = 0x01     # with RR: read ISR instead of IRR
OCW3_RR = 0x02
OCW3_POLL = 0x04
OCW3_SMM = 0x20     # with ESMM: set (1) or reset (0) the special mask mode
OCW3_ESMM = 0x40

CASCADE_IRQ = 2


class Pic8259:
    """One 8259A in 8086 mode. Ports: offset 0 command (ICWs 1, OCW2/3), offset 1 data (IMR)."""

    def __init__(self, name: str, elcr_writable: int, is_master: bool):
        self.name = name
        self._is_master = is_master
        self.elcr = 0
        self._elcr_writable = elcr_writable
        self.vector_base = 0
        self.irr = self.isr = self.imr = 0
        self._levels = 0            # the input lines as last driven (edge detection)
        self._init_step = 0         # 0: operating; 2..4: the next ICW expected
        self._icw4_needed = False
        self._single = False
        self.auto_eoi = False
        self._rotate_on_aeoi = False
        self.special_fully_nested = False
        self._special_mask = False
        self._read_isr = False
        self._poll = False
        self._lowest = 7            # the lowest-priority IR: priorities rotate past it
        self.cascade = 0            # ICW3 as written

    # -- the input lines -------------------------------------------------------------------

    def set_irq(self, irq: int, level: bool) -> None:
        bit = 1 << irq
        if self.elcr & bit:
            # Level-triggered: the request is there exactly while the line is high.
            if level:
                self.irr |= bit
            else:
                self.irr &= ~bit
        elif level and not self._levels & bit:
            self.irr |= bit         # a rising edge latches; falling does not clear it
        if level:
            self._levels |= bit
        else:
            self._levels &= ~bit

    # -- priorities --------------------------------------------------------------------------

    def _priority(self, irq: int) -> int:
        """0 is the highest priority: the IR just after the lowest one."""
        return (irq - self._lowest - 1) & 7

    def _best(self, bits: int) -> int | None:
        best = None
        for irq in range(8):
            if bits & (1 << irq) and (best is None or self._priority(irq) < self._priority(best)):
                best = irq
        return best

    def pending(self) -> int | None:
        """The IR that INT would present now: unmasked, above everything in service."""
        req = self._best(self.irr & ~self.imr)
        if req is None:
            return None
        in_service = self.isr
        if self._special_mask:
            in_service &= ~self.imr   # masked levels in service do not block lower ones
        if self.special_fully_nested and self._is_master:
            in_service &= ~self.cascade  # a slave's higher request may nest in its own level
        cur = self._best(in_service)
        if cur is not None and self._priority(cur) <= self._priority(req):
            return None
        return req

    def intack(self, irq: int) -> None:
        """The INTA pulses for `irq`: IRR -> ISR (ISR untouched with auto-EOI)."""
        bit = 1 << irq
        if not self.elcr & bit:
            self.irr &= ~bit
        if self.auto_eoi:
            if self._rotate_on_aeoi:
                self._lowest = irq
        else:
            self.isr |= bit

    def _eoi(self, irq: int | None, rotate: bool) -> None:
        if irq is None:
            irq = self._best(self.isr)
            if irq is None:
                return
        self.isr &= ~(1 << irq)
        if rotate:
            self._lowest = irq

    # -- the ports -----------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset == 1:
            return self.imr
        if self._poll:
            self._poll = False
            irq = self.pending()
            if irq is None:
                return 0
            self.intack(irq)
            return 0x80 | irq
        return self.isr if self._read_isr else self.irr

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            self._command(value)
        else:
            self._data(value)

    def _command(self, value: int) -> None:
        if value & ICW1_INIT:
            self._icw1(value)
        elif value & 0x18 == 0x08:
            self._ocw3(value)
        elif value & 0x18 == 0x00:
            self._ocw2(value)

    def _icw1(self, value: int) -> None:
        # Initialization clears the masks and the in-service state, resets the edge sense
        # (a line already high must rise again), gives IR7 the lowest priority and selects IRR.
        self.imr = self.isr = self.irr = 0
        self._levels = 0
        self._lowest = 7
        self._special_mask = self._read_isr = self._poll = False
        self.auto_eoi = self._rotate_on_aeoi = self.special_fully_nested = False
        self._icw4_needed = bool(value & ICW1_IC4)
        self._single = bool(value & ICW1_SNGL)
        self._init_step = 2

    def _ocw2(self, value: int) -> None:
        rotate, specific, eoi = value & 0x80, value & 0x40, value & 0x20
        level = value & 7
        if eoi:
            self._eoi(level if specific else None, bool(rotate))
        elif specific:
            if rotate:
                self._lowest = level    # set priority: `level` becomes the lowest
        else:
            self._rotate_on_aeoi = bool(rotate)

    def _ocw3(self, value: int) -> None:
        if value & OCW3_ESMM:
            self._special_mask = bool(value & OCW3_SMM)
        if value & OCW3_RR:
            self._read_isr = bool(value & OCW3_RIS)
        self._poll = bool(value & OCW3_POLL)

    def _data(self, value: int) -> None:
        step = self._init_step
        if step == 0:
            self.imr = value                    # OCW1
        elif step == 2:
            self.vector_base = value & 0xF8     # ICW2: 8086 mode uses T7-T3
            if not self._single:
                self._init_step = 3
            else:
                self._init_step = 4 if self._icw4_needed else 0
        elif step == 3:
            self.cascade = value                # ICW3
            self._init_step = 4 if self._icw4_needed else 0
        else:
            self.auto_eoi = bool(value & ICW4_AEOI)     # ICW4
            self.special_fully_nested = bool(value & ICW4_SFNM)
            self._init_step = 0

    def set_elcr(self, value: int) -> None:
        self.elcr = value & self._elcr_writable
        # A line turned level-triggered requests while it is high; one turned edge keeps its IRR.
        self.irr |= self._levels & self.elcr


class Elcr:
    """Ports 0x4D0 (IRQ 0-7) and 0x4D1 (IRQ 8-15): bit n set makes that IRQ level-triggered."""

    def __init__(self, pics: tuple[Pic8259, Pic8259]):
        self._pics = pics

    def read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            if offset + i < 2:
                value |= self._pics[offset + i].elcr << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            if offset + i < 2:
                self._pics[offset + i].set_elcr((value >> (8 * i)) & 0xFF)


class PicPair:
    """The cascaded pair as the CPU sees it: `has_interrupt()` is INTR, `acknowledge()` is INTA.

    Register `master` at 0x20 (2 ports), `slave` at 0xA0 (2 ports), `elcr` at 0x4D0 (2 ports).
    """

    # IRQ 0, 1, 2 (timer, keyboard, cascade) and 8, 13 (RTC, FPU) are always edge-triggered.
    MASTER_ELCR_WRITABLE = 0xF8
    SLAVE_ELCR_WRITABLE = 0xDE

    def __init__(self):
        self.master = Pic8259("master", self.MASTER_ELCR_WRITABLE, is_master=True)
        self.slave = Pic8259("slave", self.SLAVE_ELCR_WRITABLE, is_master=False)
        self.elcr = Elcr((self.master, self.slave))

    def set_irq(self, line: int, level: bool) -> None:
        """Drive ISA IRQ `line` (0-15) high or low."""
        if not 0 <= line < 16:
            raise ValueError(f"IRQ {line} is not an ISA interrupt line")
        if line < 8:
            self.master.set_irq(line, level)
        else:
            self.slave.set_irq(line - 8, level)
            self._cascade()

    def set_level_triggered(self, line: int, level_triggered: bool = True) -> None:
        """What a PC's firmware does through the ELCR before the guest runs."""
        pic, bit = (self.master, 1 << line) if line < 8 else (self.slave, 1 << (line - 8))
        pic.set_elcr(pic.elcr | bit if level_triggered else pic.elcr & ~bit)

    def _cascade(self) -> None:
        # The slave's INT output drives the master's IR2 input like any other line.
        self.master.set_irq(CASCADE_IRQ, self.slave.pending() is not None)

    def has_interrupt(self) -> bool:
        """INTR: the master presents an unmasked request above everything in service."""
        self._cascade()
        return self.master.pending() is not None

    def acknowledge(self) -> int:
        """INTA: the vector of the request in charge; IRR -> ISR on the chips that took part.

        When the request has gone (a level line fell, or a mask was set, between INTR and INTA)
        the 8259A answers with its IR7 vector without setting ISR: the spurious IRQ 7. A request
        that vanished from the slave gives the slave's IR7 (IRQ 15), with the master's IR2 in
        service, so the guest's handler must EOI the master.
        """
        self._cascade()
        irq = self.master.pending()
        if irq is None:
            return self.master.vector_base | 7
        self.master.intack(irq)
        if irq == CASCADE_IRQ and self.master.cascade & (1 << CASCADE_IRQ):
            sirq = self.slave.pending()
            if sirq is None:
                vector = self.slave.vector_base | 7
            else:
                self.slave.intack(sirq)
                vector = self.slave.vector_base | sirq
            self._cascade()
            return vector
        return self.master.vector_base | irq
