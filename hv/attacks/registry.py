"""The catalogue of implemented attacks, in attacks.md order, and the matrix over modes."""

from __future__ import annotations

from types import ModuleType
from typing import Callable, Iterable

from hv.attacks import (a01_dump, a02_cold_boot, a03_dma, a04_registers, a05_replay, a07_severed,
                        a09_sevurity, a11_cipherleaks, a13_undeserved, a14_page_faults,
                        a15_launch_injection, a16_debug_policy)
from hv.attacks.outcome import MODES, ModeUnavailable, Outcome

__all__ = ["ATTACKS", "by_id", "run_matrix"]

ATTACKS: tuple[ModuleType, ...] = (
    a01_dump, a02_cold_boot, a03_dma, a04_registers, a05_replay, a07_severed, a09_sevurity,
    a11_cipherleaks, a13_undeserved, a14_page_faults, a15_launch_injection, a16_debug_policy,
)


def by_id(name: str) -> ModuleType:
    """An attack by id ("A07", "a7") or module name ("a07_severed")."""
    key = name.strip().lower()
    for a in ATTACKS:
        if key in (a.ID.lower(), a.__name__.rsplit(".", 1)[1], f"a{int(a.ID[1:])}"):
            return a
    raise KeyError(f"no attack {name!r} (try one of {', '.join(a.ID for a in ATTACKS)})")


def run_matrix(modes: Iterable[str] = MODES, attacks: Iterable[ModuleType] = ATTACKS,
               progress: Callable[[Outcome], None] | None = None) -> tuple[list[Outcome], dict[str, str]]:
    """Every attack in every mode. Returns (cells, {mode: why it was skipped}) - a mode this
    hv cannot launch yields no cells at all rather than made-up ones."""
    cells: list[Outcome] = []
    skipped: dict[str, str] = {}
    for attack in attacks:
        for mode in modes:
            if mode in skipped:
                continue
            try:
                out = attack.run(mode)
            except ModeUnavailable as e:
                if attack.ID in ("A13", "A15"):   # the lab's own launch: plain SEV only
                    skipped.setdefault(f"{attack.ID}/{mode}", str(e))
                    continue
                skipped[mode] = str(e)
                continue
            cells.append(out)
            if progress is not None:
                progress(out)
    return cells, skipped
