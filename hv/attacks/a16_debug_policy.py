"""A16: debug-policy abuse (SEV API 55766, DBG_DECRYPT/DBG_ENCRYPT).

The PSP can decrypt any guest page for a debugger, but only when the guest owner's policy allows
it: NODBG (policy bit 0, hv's default) makes DBG_DECRYPT fail with POLICY_FAILURE (0x07), and the
policy is bound into the launch measurement, so a hypervisor cannot quietly launch with a weaker
one. Plain VMs have no PSP context: nothing to abuse (the hypervisor reads them directly, A01).
SEV-SNP has its own SNP_DBG_DECRYPT, allowed only under the policy's DEBUG bit (19), which the
attestation report shows the owner. Its secret arrives after attestation, so the hypervisor asks
for the page of the guest's copy of it while the guest runs.
"""

from __future__ import annotations

from hv import boot
from hv.attacks.lab import Lab
from hv.attacks.outcome import Outcome
from hv.attacks.secrets import fresh_secret
from hv.attacks.snoop import snoop
from hv.kvm.sev import FirmwareError

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A16"
NAME = "debug-policy abuse"
PAPER = "AMD SEV API 55766 (DBG_DECRYPT, guest policy NODBG)"
PRIMITIVES = ("P",)


def run(mode: str, *, policy: int | None = None) -> Outcome:
    """`policy`: the guest's (default: hv's, which forbids debugging)."""
    if mode == "plain":
        return Outcome(ID, mode, "n/a", "a plain VM has no PSP guest context; its memory is plaintext anyway (A01)")
    secret = fresh_secret()
    if mode == "sev-snp":
        return _run_snp(mode, secret, policy)
    with Lab("secret", mode, secret=secret, policy=policy) as lab:
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


def _run_snp(mode: str, secret: bytes, policy: int | None) -> Outcome:
    def look(lab: Lab) -> tuple[int, int, bytes | FirmwareError]:
        where = lab.symbols["static_copy"]
        try:
            return where, lab.vmm.sev.policy, lab.vmm.sev.dbg_decrypt(where & ~0xFFF)[where & 0xFFF:]
        except FirmwareError as e:
            return where, lab.vmm.sev.policy, e

    (where, policy, got), _lab, _secret = snoop(mode, look, secret=secret, policy=policy)
    if isinstance(got, FirmwareError):
        name = "POLICY_FAILURE" if got.status == 0x07 else f"status {got.status:#04x}"
        return Outcome(ID, mode, "failed", f"SNP_DBG_DECRYPT of the page holding the guest's copy at GPA "
                                           f"{where:#x} under policy {policy:#x} (DEBUG clear): {name}")
    if got.startswith(secret):
        return Outcome(ID, mode, "succeeded", f"SNP_DBG_DECRYPT of GPA {where:#x} under policy {policy:#x} "
                                              f"(DEBUG set) returned the secret")
    return Outcome(ID, mode, "failed", f"SNP_DBG_DECRYPT under policy {policy:#x} returned no secret")

