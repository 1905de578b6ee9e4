"""The 8042 keyboard controller (port 0x60 data, 0x64 status/command), with nothing plugged in.

Linux touches it for two reasons: the i8042 driver's probe (when ACPI/PNP lists a controller or
`i8042.nopnp` is given), and the reboot path, whose keyboard-controller method writes 0xFE to
port 0x64 to pulse the CPU reset line. The controller answers its own commands (self-test,
configuration byte, port tests); no keyboard or mouse is attached, so bytes for them vanish.
Not modelled: IRQ 1 and 12, scan codes, the A20 gate (always on).
"""

from __future__ import annotations

from collections import deque
from typing import Callable

__all__ = ["I8042", "I8042Port"]

STATUS_OBF, STATUS_SYS, STATUS_CMD, STATUS_UNLOCKED, STATUS_AUX_OBF = 0x01, 0x04, 0x08, 0x10, 0x20
CTB_SYS, CTB_KBD_DISABLED, CTB_AUX_DISABLED, CTB_XLATE = 0x04, 0x10, 0x20, 0x40
OUTPUT_PORT_RESET_INACTIVE, OUTPUT_PORT_A20 = 0x01, 0x02

CMD_READ_CTB, CMD_WRITE_CTB = 0x20, 0x60
CMD_AUX_DISABLE, CMD_AUX_ENABLE, CMD_AUX_TEST = 0xA7, 0xA8, 0xA9
CMD_SELF_TEST, CMD_KBD_TEST, CMD_KBD_DISABLE, CMD_KBD_ENABLE = 0xAA, 0xAB, 0xAD, 0xAE
CMD_READ_INPUT, CMD_READ_OUTPUT, CMD_WRITE_OUTPUT = 0xC0, 0xD0, 0xD1
CMD_KBD_LOOP, CMD_AUX_LOOP, CMD_AUX_SEND = 0xD2, 0xD3, 0xD4
SELF_TEST_OK, PORT_TEST_OK = 0x55, 0x00
OUTPUT_LIMIT = 16       # the guest can only be owed a few answers


class I8042Port:
    """One of the controller's two ports as a bus device (port 0x61 between them is not its)."""

    def __init__(self, kbc: "I8042", command: bool):
        self._kbc = kbc
        self._command = command

    def read(self, offset: int, size: int) -> int:
        return self._kbc.read_status() if self._command else self._kbc.read_data()

    def write(self, offset: int, size: int, value: int) -> None:
        if self._command:
            self._kbc.write_command(value & 0xFF)
        else:
            self._kbc.write_data(value & 0xFF)


class I8042:
    """Register `data_port` at 0x60 and `command_port` at 0x64, one port each."""

    def __init__(self, on_event: Callable[[str], None]):
        self._on_event = on_event
        self.ctb = CTB_XLATE | CTB_SYS          # what a PC's firmware leaves: no interrupts
        self._output: deque[tuple[int, bool]] = deque()
        self._last = 0
        self._pending: int | None = None        # a command waiting for its data byte
        self._last_was_command = False
        self.data_port = I8042Port(self, command=False)
        self.command_port = I8042Port(self, command=True)

    def _answer(self, value: int, aux: bool = False) -> None:
        if len(self._output) < OUTPUT_LIMIT:
            self._output.append((value & 0xFF, aux))

    def read_status(self) -> int:
        status = STATUS_UNLOCKED | (STATUS_SYS if self.ctb & CTB_SYS else 0)
        if self._last_was_command:
            status |= STATUS_CMD
        if self._output:
            status |= STATUS_OBF | (STATUS_AUX_OBF if self._output[0][1] else 0)
        return status

    def read_data(self) -> int:
        if self._output:
            self._last = self._output.popleft()[0]
        return self._last

    def write_command(self, cmd: int) -> None:
        self._last_was_command = True
        self._command(cmd)

    def write_data(self, value: int) -> None:
        self._last_was_command = False
        self._data(value)

    def _command(self, cmd: int) -> None:
        self._pending = None
        if cmd == CMD_READ_CTB:
            self._answer(self.ctb)
        elif 0x21 <= cmd <= 0x3F:
            self._answer(0)                     # controller RAM: nothing kept
        elif cmd == CMD_WRITE_CTB or 0x61 <= cmd <= 0x7F or cmd in (
                CMD_WRITE_OUTPUT, CMD_KBD_LOOP, CMD_AUX_LOOP, CMD_AUX_SEND):
            self._pending = cmd
        elif cmd == CMD_AUX_DISABLE:
            self.ctb |= CTB_AUX_DISABLED
        elif cmd == CMD_AUX_ENABLE:
            self.ctb &= ~CTB_AUX_DISABLED
        elif cmd in (CMD_AUX_TEST, CMD_KBD_TEST):
            self._answer(PORT_TEST_OK)
        elif cmd == CMD_SELF_TEST:
            self.ctb |= CTB_SYS
            self._answer(SELF_TEST_OK)
        elif cmd == CMD_KBD_DISABLE:
            self.ctb |= CTB_KBD_DISABLED
        elif cmd == CMD_KBD_ENABLE:
            self.ctb &= ~CTB_KBD_DISABLED
        elif cmd == CMD_READ_INPUT:
            self._answer(0)
        elif cmd == CMD_READ_OUTPUT:
            self._answer(OUTPUT_PORT_RESET_INACTIVE | OUTPUT_PORT_A20)
        elif cmd >= 0xF0 and not cmd & 0x01:
            self._on_event("reset")             # pulse output line 0: the CPU reset (0xFE)

    def _data(self, value: int) -> None:
        cmd, self._pending = self._pending, None
        if cmd == CMD_WRITE_CTB:
            self.ctb = value
        elif cmd == CMD_WRITE_OUTPUT:
            if not value & OUTPUT_PORT_RESET_INACTIVE:
                self._on_event("reset")         # driving the reset line low
        elif cmd == CMD_KBD_LOOP:
            self._answer(value)
        elif cmd == CMD_AUX_LOOP:
            self._answer(value, aux=True)
        # Bytes for the keyboard or (CMD_AUX_SEND) the mouse: neither is attached.
