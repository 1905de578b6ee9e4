"""A04: register snooping and tampering at a VMEXIT (Hetzelt & Buhren, VEE 2017; Werner et al.,
"The SEVerESt of Them All", AsiaCCS 2019).

Under plain SEV the guest's register state at an exit sits in the unencrypted VMCB and in the
host's registers, so the hypervisor reads whatever the guest held (here: the first 8 secret
bytes, live in RBX at a port write) and rewrites RIP to run any code already in the guest
(here: debug_shell, which the guest itself never calls and which prints the secret). SEV-ES moves
that state into the encrypted, integrity-checked VMSA; the hypervisor sees only what the guest
copies into the GHCB.
"""

from __future__ import annotations

from hv.attacks.evidence import text_of
from hv.attacks.findings import Findings, Seen
from hv.attacks.lab import OP_REGS, PORT_REGS, Request, Stop
from hv.attacks.outcome import Outcome
from hv.attacks.verdict import Trial, judge
from hv.kvm import RmpViolation, exits as K

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A04"
NAME = "registers at exits"
PAPER = "Hetzelt & Buhren, Security Analysis of Encrypted Virtual Machines, VEE 2017"
PRIMITIVES = ("X",)

REDIRECTED = 0x42  # debug_shell's exit status: the guest ran the code the hypervisor chose


def _attack(trial: Trial) -> Findings:
    seen: dict[str, object] = {}

    with trial.lab("service") as lab:
        target = lab.symbols["debug_shell"]

        def on_exit(e) -> None:
            if not (isinstance(e, K.Io) and e.port == PORT_REGS) or "rbx" in seen:
                return
            seen["vmsa"] = lab.vcpu.guest_state_protected
            seen["rbx"] = lab.vcpu.get_regs()["rbx"]   # under SEV-ES: the VMSA's ciphertext
            try:
                lab.vcpu.set_regs({"rip": target})
                seen["rip"] = None
            except RmpViolation as err:  # SEV-SNP: the RMP refuses host writes to the VMSA page
                seen["rip"] = err

        lab.launch()

        def script():
            yield Request(OP_REGS)

        stop = lab.run(script(), on_exit=on_exit)
        console = lab.serial()
    rbx = seen.get("rbx")
    redirected = stop.reason == "exit" and stop.code == REDIRECTED
    write, defence = _write_text(seen, stop, target, redirected)
    return Findings(f"{_read_text(seen)}; {write}",
                    recovered=rbx.to_bytes(8, "little") if isinstance(rbx, int) else b"",
                    seen=(Seen("the guest's console", console.encode(), space="offset"),),
                    completed=stop.reason == "exit", defence=defence)


def run(mode: str) -> Outcome:
    return judge(ID, mode, _attack)


def _read_text(seen: dict[str, object]) -> str:
    """What the hypervisor's read of RBX at the exit gave it."""
    rbx = seen.get("rbx")
    if not isinstance(rbx, int):
        return "the guest never made the exit the hypervisor waited for"
    where = "from the encrypted VMSA" if seen.get("vmsa") else "at the exit"
    return f"the hypervisor read RBX {where}: {rbx:#018x} (the bytes {text_of(rbx.to_bytes(8, 'little'))})"


def _write_text(seen: dict[str, object], stop: Stop, target: int, redirected: bool) -> tuple[str, str]:
    """What the hypervisor's RIP write did to the guest, and the defence that stopped it."""
    if redirected:
        return (f"it set RIP to debug_shell ({target:#x}) and the guest ran it and exited "
                f"{REDIRECTED:#x}", "")
    if "rip" not in seen:
        return f"it never wrote RIP; {stop.describe()}", ""
    err = seen["rip"]
    if err is not None:
        return f"its RIP write was refused ({err}); the guest ran on: {stop.describe()}", f"RMP: {err}"
    if isinstance(stop.exit, K.FailEntry):
        check = "VMSA integrity check failed: "
        why = (f"VMRUN failed the VMSA integrity check ({stop.exit.detail.removeprefix(check)})"
               if stop.exit.detail.startswith(check) else f"VMRUN failed ({stop.exit.detail})")
        return f"its RIP write was refused: {why}, so the guest never ran again", why
    return f"it set RIP to debug_shell ({target:#x}), but the guest did not run it: {stop.describe()}", ""
