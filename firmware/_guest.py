"""Guest contexts: the per-guest state the PSP keeps (GCTX in AMD's spec) and the handle table.

A guest context holds the guest's memory encryption key (VEK), the transport keys of its launch
session (TEK/TIK), the running launch digest and its place in the guest state machine
(sev-reference 5.4).  Handles are the only way the hypervisor names a guest; every guest command
goes through ``GuestTable.lookup`` so an unknown or stale handle is INVALID_GUEST and a command
can reach only the context it named.

Keys live in ``bytearray`` so they can be wiped when the context is decommissioned, and are
excluded from ``repr`` so a log line or a test failure never prints one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sevwire import GuestState, LaunchDigest, Policy, Status

from firmware._errors import CommandError

__all__ = ["GuestContext", "GuestTable", "MAX_GUESTS", "STATES_WITH_GUEST_COMMANDS"]

MAX_GUESTS = 1024
"""Guest contexts the firmware can hold at once; LAUNCH_START beyond it is RESOURCE_LIMIT."""

STATES_WITH_GUEST_COMMANDS = frozenset(
    {
        GuestState.LUPDATE,
        GuestState.LSECRET,
        GuestState.RUNNING,
        GuestState.SUPDATE,
        GuestState.RUPDATE,
        GuestState.SENT,
    }
)
"""Every state a live context can be in (UNINIT means "no context")."""


@dataclass(eq=False)
class GuestContext:
    """One guest as the PSP sees it."""

    handle: int
    policy: int
    state: GuestState
    vek: bytearray = field(repr=False)
    tek: bytearray = field(repr=False)
    tik: bytearray = field(repr=False)
    has_session: bool = False
    asid: int = 0
    """The key slot holding the VEK while the guest is active; 0 = inactive (never the host's)."""
    ld: LaunchDigest = field(default_factory=LaunchDigest, repr=False)
    """GCTX.LD: running SHA-256 of the launch data, finalized by LAUNCH_MEASURE."""
    launch_digest: bytes = b""
    measurement: bytes = field(default=b"", repr=False)
    """MEASURE of LAUNCH_MEASURE, bound into every LAUNCH_SECRET packet's MAC."""

    @property
    def es(self) -> bool:
        """Whether the policy requires SEV-ES (it chooses the ASID range and allows VMSA updates)."""
        return bool(self.policy & Policy.ES)

    @property
    def nodbg(self) -> bool:
        return bool(self.policy & Policy.NODBG)

    @property
    def active(self) -> bool:
        return self.asid != 0

    def close_channel(self) -> None:
        """Forget the transport keys (LAUNCH_FINISH): nothing after launch may use them."""
        _wipe(self.tek)
        _wipe(self.tik)
        self.has_session = False

    def wipe(self) -> None:
        """Forget every key of the context (DECOMMISSION, SHUTDOWN)."""
        self.close_channel()
        _wipe(self.vek)
        self.measurement = b""


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


class GuestTable:
    """Live guest contexts by handle (1..MAX_GUESTS; 0 means "new guest" in LAUNCH_START)."""

    def __init__(self) -> None:
        self._guests: dict[int, GuestContext] = {}

    def __len__(self) -> int:
        return len(self._guests)

    def __iter__(self):
        return iter(list(self._guests.values()))

    def lookup(self, handle: int) -> GuestContext:
        """The context for ``handle`` or INVALID_GUEST (handle 0 and stale handles included)."""
        guest = self._guests.get(handle)
        if guest is None:
            raise CommandError(Status.INVALID_GUEST, f"no guest with handle {handle}")
        return guest

    def free_handle(self) -> int:
        """The lowest unused handle, as the real firmware allocates; RESOURCE_LIMIT when full."""
        for handle in range(1, MAX_GUESTS + 1):
            if handle not in self._guests:
                return handle
        raise CommandError(Status.RESOURCE_LIMIT, "no free guest context")

    def add(self, guest: GuestContext) -> None:
        if guest.handle in self._guests or not 1 <= guest.handle <= MAX_GUESTS:
            raise CommandError(Status.HWERROR_PLATFORM, "guest handle allocation broke")
        self._guests[guest.handle] = guest

    def remove(self, guest: GuestContext) -> None:
        guest.wipe()
        del self._guests[guest.handle]

    def clear(self) -> None:
        for guest in list(self._guests.values()):
            self.remove(guest)

    def owner_of(self, asid: int) -> GuestContext | None:
        """The guest currently holding ``asid``, if any."""
        for guest in self._guests.values():
            if guest.asid == asid:
                return guest
        return None
