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
from hv.attacks.findings import Findings
from hv.attacks.lab import Lab
from hv.attacks.outcome import Outcome
from hv.attacks.snoop import snoop
from hv.attacks.verdict import SECRET_SIZE, Trial, judge
from hv.kvm import Mode
from hv.kvm.sev import FirmwareError, SevGuest
from hv.kvm.sev_snp import SnpGuest
from sevwire import Policy, SnpPolicy

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A16"
NAME = "debug-policy abuse"
PAPER = "AMD SEV API 55766 (DBG_DECRYPT, guest policy NODBG)"
PRIMITIVES = ("P",)


def _status(e: FirmwareError) -> str:
    return f"status {e.status:#04x} POLICY_FAILURE" if e.status == 0x07 else f"refused: {e}"


def _debug_bit(mode: str, policy: int) -> str:
    """What the policy says about debugging, from its bits (never assumed)."""
    if mode == Mode.SEV_SNP:
        return "DEBUG set" if policy & SnpPolicy.DEBUG else "DEBUG clear"
    return "NODBG" if policy & Policy.NODBG else "NODBG clear"


def _attack(trial: Trial, policy: int | None) -> Findings:
    if trial.mode == Mode.PLAIN:
        return Findings("", na="a plain VM has no PSP guest context; its memory is plaintext anyway (A01)")
    if trial.mode == Mode.SEV_SNP:
        return _attack_snp(trial, policy)
    with trial.lab("secret", policy=policy) as lab:
        lab.launch()
        sev = lab.vmm.sev
        assert isinstance(sev, SevGuest)
        policy = sev.policy
        what = f"DBG_DECRYPT of GPA {boot.SECRET_GPA:#x} under policy {policy:#x} ({_debug_bit(trial.mode, policy)})"
        try:
            plain = sev.dbg_decrypt(boot.SECRET_GPA, SECRET_SIZE)
        except FirmwareError as e:
            return Findings(f"{what}: {_status(e)}", defence=_status(e))
    return Findings(f"{what} returned {SECRET_SIZE} bytes", recovered=plain)


def _attack_snp(trial: Trial, policy: int | None) -> Findings:
    def look(lab: Lab) -> tuple[int, int, bytes | FirmwareError]:
        where = lab.symbols["static_copy"]
        sev = lab.vmm.sev
        assert isinstance(sev, SnpGuest)
        try:
            page = sev.dbg_decrypt(where & ~0xFFF)
            return where, sev.policy, page[where & 0xFFF:][:SECRET_SIZE]
        except FirmwareError as e:
            return where, sev.policy, e

    (where, policy, got), _lab = snoop(trial, look, policy=policy)
    what = (f"SNP_DBG_DECRYPT of the page holding the guest's copy at GPA {where:#x} under policy "
            f"{policy:#x} ({_debug_bit(trial.mode, policy)})")
    if isinstance(got, FirmwareError):
        name = "POLICY_FAILURE" if got.status == 0x07 else f"status {got.status:#04x}"
        return Findings(f"{what}: {name}", defence=name)
    return Findings(f"{what} returned {len(got)} bytes", recovered=got)


def run(mode: str, *, policy: int | None = None) -> Outcome:
    """`policy`: the guest's (default: hv's, which forbids debugging)."""
    return judge(ID, mode, lambda trial: _attack(trial, policy))
