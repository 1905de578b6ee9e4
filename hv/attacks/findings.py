"""What an attack reports: what the hypervisor did and saw, never whether it won.

An attack never holds the guest's secret, so it cannot say whether it got it. It hands the lab's
judge (hv.attacks.verdict) structured findings instead: the bytes it claims to have recovered,
the raw material it read (a dump, the guest's console), whether an effect it was after happened,
whether the guest finished the run, and the defence that stopped it. The judge compares all of
it with the ground truth only the lab holds.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Findings", "Seen"]


@dataclass(frozen=True)
class Seen:
    """Raw material the hypervisor read: the judge searches it for the secret. `base` is the
    address of its first byte in `space` ("GPA" or "SPA"), so a hit is reported where it lies."""

    what: str
    data: bytes
    base: int = 0
    space: str = "GPA"


@dataclass(frozen=True)
class Findings:
    """One attack's report.

    story      one line: what the hypervisor did and what happened (no verdict in it)
    recovered  bytes the attack claims are the secret's leading bytes (the judge needs 8 or more)
    seen       raw material the hypervisor read, for the judge to search
    achieved   for attacks after an effect (a counter reset, the lockout skipped, injected code
               run with the owner's trust): whether the effect was observed; None: not such an attack
    completed  the guest ran the attacked workload to its end
    defence    the defence that stopped the attack, named by what it did (a fault, a status)
    control    dumps: the honest control (the page the guest shares on purpose) was seen
    guesses    values the attack offered the guest as its secret (wrong PINs): if one was right
               by chance, the run proves nothing
    na         why the attack has no meaning in this mode ("" when it has)
    """

    story: str
    recovered: bytes = b""
    seen: tuple[Seen, ...] = ()
    achieved: bool | None = None
    completed: bool = True
    defence: str = ""
    control: bool | None = None
    guesses: tuple[bytes, ...] = ()
    na: str = ""

    def __post_init__(self) -> None:
        if "\n" in self.story or "\n" in self.defence:
            raise ValueError("a story and a defence are one line each")

    def to_json(self) -> dict:
        """The findings as the matrix's --json shows them: what was read is given by size only
        (a dump is megabytes), what was recovered in hex."""
        return {"recovered": self.recovered.hex(), "recovered_bits": 8 * len(self.recovered),
                "seen": [{"what": s.what, "bytes": len(s.data)} for s in self.seen],
                "achieved": self.achieved, "completed": self.completed,
                "defence": self.defence or None, "control": self.control,
                "guesses": len(self.guesses), "na": self.na or None}
