"""What one attack against one protection mode came to: the attack lab's typed result."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MODES", "OUTCOMES", "ModeUnavailable", "Outcome"]

MODES = ("plain", "sev", "sev-es", "sev-snp")
OUTCOMES = ("succeeded", "failed", "n/a")


class ModeUnavailable(Exception):
    """This version of hv cannot launch the mode at all (e.g. SEV-ES before it exists): the
    cell has no outcome, and saying "failed" or "n/a" would be a lie."""


@dataclass(frozen=True)
class Outcome:
    """`succeeded`: the hypervisor got what the attack is after; `failed`: a defence held;
    `n/a`: the attack has no meaning in this mode. `evidence` is one checkable line."""

    attack: str
    mode: str
    outcome: str
    evidence: str

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if "\n" in self.evidence:
            raise ValueError("evidence is one line")

    def to_json(self) -> dict:
        return {"attack": self.attack, "mode": self.mode, "outcome": self.outcome,
                "evidence": self.evidence}
