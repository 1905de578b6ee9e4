"""The PSP as the hypervisor reaches it: a mailbox of registers, and nothing else.

As on the real part (and as the Linux ccp driver drives it), the driver writes a command buffer
into host memory, writes its physical address into CMDBUFF_ADDR_LO/HI, then writes the command id
into CMDRESP, which rings the doorbell. When the firmware is done it sets the response bit and the
status in CMDRESP. The firmware runs on its own core; here it runs synchronously on the doorbell.
"""

from __future__ import annotations

__all__ = ["PspMailbox", "CMDRESP_RESP"]

CMDRESP_RESP = 1 << 31
_CMD_SHIFT = 16
_STATUS_MASK = 0xFFFF


class PspMailbox:
    """Registers: CMDRESP, CMDBUFF_ADDR_LO, CMDBUFF_ADDR_HI (offsets 0x10, 0x14, 0x18 in the ccp's
    SEV register block on Zen; the offsets are informational here)."""

    def __init__(self, firmware_factory):
        self._factory = firmware_factory
        self._fw = None
        self.cmdresp = 0
        self.addr_lo = 0
        self.addr_hi = 0
        self.log: list[tuple[int, int]] = []  # (command id, status), for traces

    def boot(self) -> None:
        """Power the PSP on if it is not yet (it loads its firmware and non-volatile state);
        raises what its boot raised. The driver sees the mailbox's registers, never the firmware."""
        self._firmware()

    def _firmware(self):
        if self._fw is None:
            self._fw = self._factory()
        return self._fw

    def write_addr(self, spa: int) -> None:
        self.addr_lo = spa & 0xFFFFFFFF
        self.addr_hi = (spa >> 32) & 0xFFFFFFFF

    def ring(self, cmd_id: int) -> int:
        """Write CMDRESP with the command id; returns CMDRESP after the firmware answered."""
        self.cmdresp = (cmd_id & 0x3FF) << _CMD_SHIFT
        status = self._firmware().command(cmd_id, self.addr_hi << 32 | self.addr_lo)
        self.cmdresp = CMDRESP_RESP | (status & _STATUS_MASK)
        self.log.append((cmd_id, status & _STATUS_MASK))
        return self.cmdresp

    def issue(self, cmd_id: int, buf_spa: int) -> int:
        """Convenience for a driver: set the buffer address, ring, return the status."""
        self.write_addr(buf_spa)
        return self.ring(cmd_id) & _STATUS_MASK
