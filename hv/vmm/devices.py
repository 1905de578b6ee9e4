"""The VMM's devices: a 16550 UART, the debug-exit port and the POST-code port.

The SEV-SNP secret release port (0x502) is hv.vmm.secret_release: it talks to the guest owner.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["SERIAL_TAIL", "DebugExit", "PostCode", "Uart16550"]

# What a UART remembers of its output: the last 1 MiB. Everything goes to `out` as it is sent
# (hv run's stdout); the tail is what summaries and the attack lab read. A guest printing
# forever must not grow hv's memory with it.
SERIAL_TAIL = 1 << 20


class Uart16550:
    """COM1. Only what a polling guest driver needs: THR out, LSR always ready, scratch regs.

    Registers (offsets): 0 THR/RBR (DLL when LCR.DLAB), 1 IER (DLM), 2 IIR/FCR, 3 LCR, 4 MCR,
    5 LSR, 6 MSR, 7 SCR.
    """

    LSR_THRE_TEMT = 0x60

    def __init__(self, out: Callable[[bytes], None], keep: int = SERIAL_TAIL):
        if keep < 1:
            raise ValueError("the UART keeps at least one byte of its output")
        self._out = out
        self._regs = [0] * 8
        self._dll = self._dlm = 0
        self._keep = keep
        self._tail = bytearray()  # up to 2 * keep bytes: trimmed in bulk, not per byte
        self.sent = 0             # bytes transmitted in all

    @property
    def transmitted(self) -> bytes:
        """The last `keep` bytes transmitted (all of them, when fewer were)."""
        return bytes(self._tail[-self._keep:])

    @property
    def dropped(self) -> int:
        """How many earlier bytes `transmitted` no longer holds."""
        return self.sent - min(len(self._tail), self._keep)

    def _transmit(self, value: int) -> None:
        """The byte leaves on the line at once: to `out`, and into the remembered tail."""
        tail = self._tail
        tail.append(value)
        self.sent += 1
        if len(tail) > 2 * self._keep:
            del tail[:-self._keep]
        self._out(bytes((value,)))

    def state(self) -> dict:
        """The registers a guest driver set (a VM that moves takes them along; not the output)."""
        return {"regs": list(self._regs), "dll": self._dll, "dlm": self._dlm}

    def restore(self, state: dict) -> None:
        regs = [int(v) & 0xFF for v in state["regs"]]
        if len(regs) != 8:
            raise ValueError("a 16550 has 8 registers")
        self._regs, self._dll, self._dlm = regs, int(state["dll"]) & 0xFF, int(state["dlm"]) & 0xFF

    def read(self, offset: int, size: int) -> int:
        dlab = self._regs[3] & 0x80
        if offset == 0:
            return self._dll if dlab else 0  # no input
        if offset == 1:
            return self._dlm if dlab else self._regs[1]
        if offset == 2:
            return 0x01  # no interrupt pending
        if offset == 5:
            return self.LSR_THRE_TEMT
        if offset == 6:
            return 0xB0  # DCD, DSR, CTS
        return self._regs[offset]

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        dlab = self._regs[3] & 0x80
        if offset == 0 and not dlab:
            self._transmit(value)
        elif offset == 0:
            self._dll = value
        elif offset == 1 and dlab:
            self._dlm = value
        elif offset != 5:
            self._regs[offset] = value


class DebugExit:
    """Writing v stops the guest; hv exits with status v & 0xff."""

    def __init__(self):
        self.code: int | None = None

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        self.code = value & 0xFF


class PostCode:
    """Port 0x80: ignored, but each write is a full exit (benchmarks count on that)."""

    def __init__(self):
        self.last = 0
        self.writes = 0

    def read(self, offset: int, size: int) -> int:
        return self.last

    def write(self, offset: int, size: int, value: int) -> None:
        self.last = value & 0xFF
        self.writes += 1
