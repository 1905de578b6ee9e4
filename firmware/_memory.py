"""Bounds-checked memory access for one firmware command.

Every address the firmware touches comes from a command buffer the (untrusted) hypervisor wrote.
This wrapper is the only code that calls the port's memory methods, so the rules live in one
place:

- an address/length pair must fit in 64 bits (a wrapping range is INVALID_ADDRESS, not a read of
  address 0);
- a port refusal (``PortError``) becomes INVALID_ADDRESS, or INVALID_ASID for a key slot the
  memory controller does not have;
- a range is probed at both ends before anything is changed, so a command whose range runs off
  the end of DRAM fails before it has encrypted or measured half of it (DRAM is one contiguous
  range on this machine; the real firmware's ``validate_address_range`` plays the same role);
- bulk work goes in chunks, so a 4 GiB length never becomes one 4 GiB Python object;
- no range may reach the SEV-ES trusted memory region (``tmr``, set by INIT): INVALID_ADDRESS.
  The TMR holds the integrity values of guests' saved register state. The machine fences it from
  the host, from devices and from guests, but not from the PSP, which keeps those values there;
  so an address the hypervisor names must never let the firmware write there (a forged or erased
  value) or read from there (a leaked one). Every access below checks, for host and guest-key
  accesses alike, and a command that must refuse before it changes anything calls
  ``outside_tmr`` first. The firmware's own slots are reached only through ``read_tmr`` and
  ``write_tmr``.

Guest-key accesses take a ``GuestContext`` rather than a bare ASID, so no command can name an
ASID that is not its own guest's: the handle check is what chooses the key.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sevwire import Status

from firmware._errors import CommandError
from firmware.ports import PlatformPort, PortAsidError, PortError

if TYPE_CHECKING:
    from firmware._guest import GuestContext

__all__ = ["Memory", "port_errors", "CHUNK", "U64_MAX"]

U64_MAX = (1 << 64) - 1
CHUNK = 1 << 20
"""Bytes moved per port call in bulk commands (the real PSP uses its scratch buffer the same way)."""


class Memory:
    """The firmware's view of system memory, through the platform port."""

    def __init__(self, port: PlatformPort) -> None:
        self._port = port
        self.tmr: tuple[int, int] | None = None
        """(base, length) of the SEV-ES TMR while the platform is INITed with SEV-ES, else None."""

    def outside_tmr(self, spa: int, length: int) -> None:
        """INVALID_ADDRESS unless ``[spa, spa+length)`` is a valid range that misses the TMR."""
        _check_range(spa, length)
        if self.tmr is not None and length > 0:
            base, size = self.tmr
            if spa < base + size and base < spa + length:
                raise CommandError(Status.INVALID_ADDRESS,
                                   f"range 0x{spa:x}+0x{length:x} reaches the TMR")

    # -- host (C=0) accesses: command buffers, certificates, session blobs, outputs ----------

    def read(self, spa: int, length: int) -> bytes:
        """Read ``length`` bytes at ``spa`` as the host sees them; refuse a bad range."""
        self.outside_tmr(spa, length)
        if length == 0:
            return b""
        with port_errors():
            data = bytes(self._port.read(spa, length))
        if len(data) != length:
            raise CommandError(Status.INVALID_ADDRESS, "short read from the platform port")
        return data

    def write(self, spa: int, data: bytes) -> None:
        """Write ``data`` at ``spa`` as the host would; refuse a bad range."""
        self.outside_tmr(spa, len(data))
        if not data:
            return
        with port_errors():
            self._port.write(spa, bytes(data))

    def probe(self, spa: int, length: int) -> None:
        """Fail now if ``[spa, spa+length)`` is not backed by memory (reads both ends)."""
        self.outside_tmr(spa, length)
        if length == 0:
            return
        with port_errors():
            self._port.read(spa, 1)
            self._port.read(spa + length - 1, 1)

    def chunks(self, spa: int, length: int) -> Iterator[tuple[int, int]]:
        """Yield ``(address, size)`` pieces of at most ``CHUNK`` bytes covering the range."""
        _check_range(spa, length)
        offset = 0
        while offset < length:
            size = min(CHUNK, length - offset)
            yield spa + offset, size
            offset += size

    # -- guest-key accesses: always the guest's own ASID ------------------------------------

    def read_guest(self, guest: GuestContext, spa: int, length: int) -> bytes:
        """Decrypt ``length`` bytes at ``spa`` with ``guest``'s key slot."""
        asid = _active_asid(guest)
        self.outside_tmr(spa, length)
        if length == 0:
            return b""
        with port_errors():
            data = bytes(self._port.read_guest(asid, spa, length))
        if len(data) != length:
            raise CommandError(Status.INVALID_ADDRESS, "short read from the platform port")
        return data

    def write_guest(self, guest: GuestContext, spa: int, data: bytes) -> None:
        """Encrypt ``data`` into ``spa`` with ``guest``'s key slot."""
        asid = _active_asid(guest)
        self.outside_tmr(spa, len(data))
        if not data:
            return
        with port_errors():
            self._port.write_guest(asid, spa, bytes(data))

    def probe_guest(self, guest: GuestContext, spa: int, length: int) -> None:
        """Fail now if the range is not accessible under the guest's key slot."""
        asid = _active_asid(guest)
        self.outside_tmr(spa, length)
        if length == 0:
            return
        with port_errors():
            self._port.read_guest(asid, spa, 1)
            self._port.read_guest(asid, spa + length - 1, 1)

    # -- the TMR itself: the firmware's own VMSA integrity slots -------------------------------

    def read_tmr(self) -> bytes:
        """The whole TMR (the firmware looking for a VMSA's slot)."""
        base, size = self._own_tmr()
        with port_errors():
            data = bytes(self._port.read(base, size))
        if len(data) != size:
            raise CommandError(Status.INVALID_ADDRESS, "short read from the platform port")
        return data

    def write_tmr(self, spa: int, data: bytes) -> None:
        """Write a slot the firmware chose; it must lie inside the TMR."""
        base, size = self._own_tmr()
        if not base <= spa <= spa + len(data) <= base + size:
            raise RuntimeError(f"TMR write 0x{spa:x}+0x{len(data):x} outside the TMR")
        with port_errors():
            self._port.write(spa, bytes(data))

    def _own_tmr(self) -> tuple[int, int]:
        if self.tmr is None:
            raise CommandError(Status.INVALID_CONFIG, "the platform has no TMR (INIT without SEV-ES)")
        return self.tmr


def _active_asid(guest: GuestContext) -> int:
    # Callers check activity first (and answer INACTIVE); this is the backstop that keeps an
    # inactive guest from reaching key slot 0, the host's.
    if guest.asid <= 0:
        raise CommandError(Status.INACTIVE, "guest has no ASID")
    return guest.asid


def _check_range(spa: int, length: int) -> None:
    if spa < 0 or length < 0 or spa > U64_MAX or spa + length - 1 > U64_MAX:
        raise CommandError(Status.INVALID_ADDRESS, f"range 0x{spa:x}+0x{length:x} wraps 64 bits")


class port_errors:
    """Turn a port refusal into the SEV status code the hypervisor gets back (context manager
    around every port call: memory here, key slots in the guest commands)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            return False
        if isinstance(exc, PortAsidError):
            raise CommandError(Status.INVALID_ASID, str(exc)) from exc
        if isinstance(exc, PortError):
            raise CommandError(Status.INVALID_ADDRESS, str(exc)) from exc
        return False
