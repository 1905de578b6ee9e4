"""A16: debug-policy abuse (SEV API 55766, DBG_DECRYPT/DBG_ENCRYPT).

The PSP can decrypt any guest page for a debugger, but only when the guest owner's policy allows
it: NODBG (policy bit 0, hv's default) makes DBG_DECRYPT fail with POLICY_FAILURE (0x07), and the
policy is bound into the launch measurement, so a hypervisor cannot quietly launch with a weaker
one. Plain VMs have no PSP context: nothing to abuse (the hypervisor reads them directly, A01).
"""

from __future__ import annotations

from hv import boot
from hv.attacks.lab import Lab
from hv.attacks.outcome import Outcome
from hv.attacks.secrets import fresh_secret
from hv.kvm.sev import FirmwareError

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A16"
NAME = "debug-policy abuse"
PAPER = "AMD SEV API 55766 (DBG_DECRYPT, guest policy NODBG)"
PRIMITIVES = ("P",)


def run(mode: str) -> Outcome:
    if mode == "plain":
        return Outcome(ID, mode, "n/a", "a plain VM has no PSP guest context; its memory is plaintext anyway (A01)")
    secret = fresh_secret()
    with Lab("secret", mode, secret=secret) as lab:
        lab.launch()
        policy = lab.vmm.sev.policy
        try:
            plain = lab.vmm.sev.dbg_decrypt(boot.SECRET_GPA, len(secret))
        except FirmwareError as e:
            return Outcome(ID, mode, "failed",
                           f"DBG_DECRYPT of GPA {boot.SECRET_GPA:#x} under policy {policy:#x} (NODBG): "
                           f"status {e.status:#04x} POLICY_FAILURE" if e.status == 0x07 else
                           f"DBG_DECRYPT refused: {e}")
    if plain == secret:
        return Outcome(ID, mode, "succeeded", f"DBG_DECRYPT under policy {policy:#x} returned the secret")
    return Outcome(ID, mode, "failed", f"DBG_DECRYPT under policy {policy:#x} returned no secret")
