"""The passive snooping run the dump attacks (A01-A03) and the demo share, and its kernel form.

The `secret` guest holds its secret in private memory on its stack, heap and .bss and the
non-secret HV-SHARED-MARKER in the one page it shares with the hypervisor; it writes the round
number to the POST port 64 times while the secret is live. The snoop pauses the guest at round 32
(an exit) and calls `look(lab)` there: whatever it reads is what the hypervisor could read.
A kernel (hv.attacks.kernel_lab) is looked at in its last exit, its power-off (A04 also at
every exit before it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

from hv.attacks.lab import Lab
from hv.hw.grants import TweakMode
from hv.kvm import exits as K

if TYPE_CHECKING:
    from hv.attacks.kernel_lab import KernelLab
    from hv.attacks.verdict import KernelTrial, Trial
    from hv.vmm.linux import KernelVmm

__all__ = ["POST_PORT", "SNOOP_ROUND", "snoop", "snoop_kernel"]

POST_PORT = 0x80
SNOOP_ROUND = 32
T = TypeVar("T")


def snoop(trial: "Trial", look: Callable[[Lab], T], *, tsme: bool = False,
          policy: int | None = None, physical: bool = False) -> tuple[T, Lab]:
    """Boot `secret` with the trial's secret, call `look(lab)` at round 32, let the guest
    finish. Returns (what look returned, the finished lab). `physical`: the lab also holds a
    physical attacker's access (DMA, the DRAM cells), for A02 and A03 only."""
    seen: list[T] = []

    def on_exit(e) -> None:
        if isinstance(e, K.Io) and e.port == POST_PORT and not e.is_in and e.data == SNOOP_ROUND and not seen:
            seen.append(look(lab))

    lab = trial.lab("secret", tsme=tsme, tweak=TweakMode.XEX_RANDOM, policy=policy, physical=physical)
    try:
        lab.launch()
        stop = lab.run(on_exit=on_exit)
    finally:
        lab.close()
    if not seen:
        raise RuntimeError(f"the secret guest never reached round {SNOOP_ROUND}: {stop.describe()}")
    return seen[0], lab


def snoop_kernel(trial: "KernelTrial", look: Callable[["KernelLab"], T], *, physical: bool = False,
                 on_exit: Callable[["KernelVmm"], None] | None = None) -> tuple[T, "KernelLab"]:
    """Boot the trial's kernel to its init's power-off and call `look(lab)` at that last exit,
    where the unpacked initramfs is still in memory (and `on_exit(vmm)` at every exit on the way).
    Only the init powers off, so a run that ends another way (a panic, the time limit) never had
    the marker live: no verdict."""
    lab = trial.lab(physical=physical)
    result = lab.run(on_exit)
    if result.exit_reason != "poweroff":
        last = [line.strip() for line in result.serial.splitlines() if line.strip()][-1:]
        raise RuntimeError(f"the kernel never reached its init's power-off: {result.exit_reason}"
                           + (f" ({result.message})" if result.message else "")
                           + (f"; its console's last line: {last[0]}" if last else "; its console is empty"))
    return look(lab), lab
