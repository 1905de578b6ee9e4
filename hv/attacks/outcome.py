"""What one attack against one protection mode came to: the attack lab's typed result."""

from __future__ import annotations

from dataclasses import dataclass, field

from hv.kvm.mode import Mode

__all__ = ["MODES", "OUTCOMES", "Outcome"]

MODES = tuple(Mode)
OUTCOMES = ("succeeded", "failed", "n/a", "error")


@dataclass(frozen=True)
class Outcome:
    """`succeeded`: the hypervisor got what the attack is after; `failed`: a defence held;
    `n/a`: the attack has no meaning in this mode; `error`: the experiment broke (the guest
    crashed where it should not, the honest control was missing, too little was recovered to
    judge), so there is no verdict. `evidence` is one checkable line; `findings` is what the
    attack reported, as JSON (hv.attacks.findings), or None when it reported nothing."""

    attack: str
    mode: str
    outcome: str
    evidence: str
    findings: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if "\n" in self.evidence:
            raise ValueError("evidence is one line")

    def to_json(self) -> dict:
        return {"attack": self.attack, "mode": self.mode, "outcome": self.outcome,
                "evidence": self.evidence, "findings": self.findings}
