"""A02: cold boot (Halderman et al., "Lest We Remember", USENIX Security 2008).

A physical attacker freezes the DIMMs, and reads the cells: what DRAM stores, caches flushed,
no key applied. Without SME that is a plain VM's plaintext. SEV guests' private pages are stored
encrypted, and so is everything under transparent SME (TSME): the host key lives in the memory
controller and, like every VEK, is made new at each boot. The attack's second half re-imports
the frozen cells into a freshly powered machine and reads them through its (new) host key:
ciphertext from the old boot decrypts to garbage.
"""

from __future__ import annotations

from hv.attacks.evidence import find_all, find_windows, hexs
from hv.attacks.lab import SHARED_MARKER, Lab
from hv.attacks.outcome import Outcome
from hv.attacks.snoop import snoop
from hv.hw.machine import Machine, MachineConfig

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A02"
NAME = "cold boot"
PAPER = "Halderman et al., Lest We Remember: Cold Boot Attacks on Encryption Keys, USENIX Security 2008"
PRIMITIVES = ("Phys", "R")


def _freeze(lab: Lab) -> bytes:
    return lab.machine.cold_boot.dump()


def run(mode: str, *, tsme: bool = False) -> Outcome:
    cells, lab, secret = snoop(mode, _freeze, tsme=tsme)
    hits = find_windows(cells, secret)
    marker = find_all(cells, SHARED_MARKER)
    # Power cycle: same cells, new machine, new keys. Read them back through the new host key.
    fresh = Machine(MachineConfig(dram_size=len(cells), tweak=lab.machine.tweak_mode(), tsme=tsme))
    fresh.host.write(0, cells)
    reboot_hits = find_windows(fresh.host.read(0, len(cells), c_bit=True), secret)
    host = "host with TSME" if tsme else "host without SME"
    control = (f"control marker at SPA {hexs(marker)}" if marker else "control marker not in the cells either")
    after = "after a power cycle the new host key " + ("also finds it" if reboot_hits else "decrypts the cells to garbage")
    if hits or reboot_hits:
        where = hexs(hits) if hits else "(only through the new key)"
        return Outcome(ID, mode, "succeeded",
                       f"{host}: secret found in raw DRAM at SPA {where}; {control}; {after}")
    return Outcome(ID, mode, "failed",
                   f"{host}: no 16-byte window of the secret in {len(cells) >> 20} MiB of DRAM cells; "
                   f"{control}; {after}")
