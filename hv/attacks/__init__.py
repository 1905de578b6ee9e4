"""The attack lab: a malicious hypervisor reproducing the literature's attacks on SEV.

Each attack is one module with ID, NAME, PAPER, PRIMITIVES (attacks.md's codes) and
`run(mode) -> Outcome`; it drives a real guest through a real launch and uses only what the
hypervisor can see and do (hv.vmm, hv.kvm, the host/DMA/cold-boot ports, PSP commands).
"""

from hv.attacks.outcome import MODES, OUTCOMES, ModeUnavailable, Outcome
from hv.attacks.registry import ATTACKS, by_id, run_matrix

__all__ = ["ATTACKS", "MODES", "OUTCOMES", "ModeUnavailable", "Outcome", "by_id", "run_matrix"]
