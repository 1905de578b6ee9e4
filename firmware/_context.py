"""The PSP's private state while it runs, shared by the command handlers.

One ``PspContext`` per firmware instance: the platform state machine (sev-reference 5.1), the
SEV-ES configuration chosen at INIT, the guest contexts, the ASIDs waiting for DF_FLUSH, the
platform identity and the non-volatile store it is saved to.  Handlers receive it explicitly (no
module globals), so two emulated machines in one process never share a key or a guest.

Platform state transitions (as in AMD's firmware state table):

    UNINIT --INIT--> INIT --LAUNCH_START (first guest)--> WORKING
    WORKING --DECOMMISSION (last guest)--> INIT
    any --SHUTDOWN--> UNINIT (every guest is decommissioned, every key slot cleared)

WORKING therefore means exactly "initialised and holding at least one guest context".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sevwire import PlatformState, Status

from firmware._errors import CommandError
from firmware._guest import GuestTable
from firmware._identity import PlatformIdentity
from firmware._memory import Memory
from firmware._nvstore import NvStore
from firmware.ports import PlatformPort

__all__ = ["PspContext", "API_MAJOR", "API_MINOR", "BUILD"]

API_MAJOR = 0
API_MINOR = 24
BUILD = 15
"""The SEV API version this firmware implements: 0.24, build 15 (a Rome-era SEV firmware).

Any API >= 0.17 selects the versioned LAUNCH_MEASURE input, 0x04 || API_MAJOR || API_MINOR ||
BUILD || POLICY u32 || LD[32] || MNONCE[16] (56 bytes; sev-reference 6 says 57, a miscount: the
published sev-tool vector needs 56), and the MEASURE term in the LAUNCH_SECRET MAC.  The values
are also written into the version fields of every certificate the firmware makes.
"""


@dataclass(eq=False)
class PspContext:
    """Everything the firmware keeps between two mailbox commands."""

    port: PlatformPort
    mem: Memory
    identity: PlatformIdentity
    nvstore: NvStore
    state: PlatformState = PlatformState.UNINIT
    config_es: bool = False
    guests: GuestTable = field(default_factory=GuestTable)
    snp_guests: dict | None = None
    """SEV-SNP guest contexts by context-page address; None until SNP_INIT turned the RMP on."""
    dirty_asids: set[int] = field(default_factory=set)
    """ASIDs whose key slot may still have lines in the caches: DEACTIVATEd (or never flushed
    since INIT) and not DF_FLUSHed since.  ACTIVATE on one of them is DFFLUSH_REQUIRED."""

    @property
    def tmr(self) -> tuple[int, int] | None:
        """(base, length) of the SEV-ES TMR given at INIT, or None. Kept by ``mem``, which refuses
        every command address that reaches it."""
        return self.mem.tmr

    @tmr.setter
    def tmr(self, value: tuple[int, int] | None) -> None:
        self.mem.tmr = value

    def require_state(self, *allowed: PlatformState) -> None:
        """INVALID_PLATFORM_STATE unless the platform is in one of ``allowed``."""
        if self.state not in allowed:
            names = "/".join(s.name for s in allowed)
            raise CommandError(
                Status.INVALID_PLATFORM_STATE, f"platform is {self.state.name}, needs {names}"
            )

    def change_identity(self, change: Callable[[], None]) -> None:
        """Apply ``change`` to the owner identity and persist it, as one read-modify-write
        under the state file's lock: the owner part is re-read from the file first, so a change
        another process made since this PSP booted is built on, never overwritten.  ``change``
        must read ``self.identity`` when it runs (and make its ownership checks there).  If the
        re-read or the write fails nothing changes (``NvStoreError``; memory and file agree, as
        after a failed flash write)."""
        with self.nvstore.locked():
            self._reload_owner()
            before = self.identity.owner
            try:
                change()
                self.nvstore.save(self.identity)
            except BaseException:
                self.identity.owner = before
                raise

    def _reload_owner(self) -> None:
        record = self.nvstore.load_record()
        if record is None:
            return  # in memory only, or the file is gone: the save writes this identity again
        self.identity.owner = self.identity.owner_from_record(record)

    def update_working(self) -> None:
        """Move between INIT and WORKING after a guest context was created or removed."""
        if self.state is PlatformState.UNINIT:
            return
        self.state = PlatformState.WORKING if len(self.guests) else PlatformState.INIT

    def asid_ranges(self) -> tuple[range, range]:
        """(SEV-ES ASIDs, plain SEV ASIDs) from CPUID 0x8000001F EDX/ECX via the port."""
        max_asid = int(self.port.max_asid)
        min_sev = max(1, int(self.port.min_sev_asid))
        return range(1, min(min_sev, max_asid + 1)), range(min_sev, max_asid + 1)
