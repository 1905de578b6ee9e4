"""The attack lab: a malicious hypervisor reproducing the literature's attacks on SEV.

Each attack is one module with ID, NAME, PAPER, PRIMITIVES (attacks.md's codes) and
`run(mode) -> Outcome`; it drives a real guest through a real launch and uses only what the
hypervisor can see and do (hv.vmm, hv.kvm, the host port, PSP commands; the DMA and cold-boot
ports only as a physical attacker, when granted). It reports Findings; the lab's judge
(hv.attacks.verdict), which alone holds the guest's secret, decides the outcome.
"""

from hv.attacks.outcome import MODES, OUTCOMES, Outcome
from hv.attacks.registry import ATTACKS, by_id, run_matrix

__all__ = ["ATTACKS", "MODES", "OUTCOMES", "Outcome", "by_id", "run_matrix"]
