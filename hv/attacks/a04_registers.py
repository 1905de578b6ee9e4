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
from hv.attacks.lab import OP_REGS, PORT_REGS, Lab, Request, Stop
from hv.attacks.outcome import Outcome
from hv.attacks.secrets import fresh_secret
from hv.kvm import exits as K

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A04"
NAME = "registers at exits"
PAPER = "Hetzelt & Buhren, Security Analysis of Encrypted Virtual Machines, VEE 2017"
PRIMITIVES = ("X",)


def run(mode: str) -> Outcome:
    secret = fresh_secret()
    seen: dict[str, object] = {}

    with Lab("service", mode, secret=secret) as lab:
        target = lab.symbols["debug_shell"]

        def on_exit(e) -> None:
            if not (isinstance(e, K.Io) and e.port == PORT_REGS) or "rbx" in seen:
                return
            seen["vmsa"] = lab.vcpu.guest_state_protected
            try:
                seen["rbx"] = lab.vcpu.get_regs()["rbx"]
            except Exception as err:  # the state is not the hypervisor's to read
                seen["rbx"] = err
            try:
                lab.vcpu.set_regs({"rip": target})
                seen["rip"] = None
            except Exception as err:  # SEV-SNP: the RMP refuses host writes to the VMSA page
                seen["rip"] = err

        lab.launch()

        def script():
            yield Request(OP_REGS)

        stop = lab.run(script(), on_exit=on_exit)
        serial = lab.serial()
    rbx = seen.get("rbx")
    leaked = isinstance(rbx, int) and rbx.to_bytes(8, "little") == secret[:8]
    redirected = stop.reason == "exit" and stop.code == 0x42 and secret.hex() in serial
    verdict = "succeeded" if leaked or redirected else "failed"
    return Outcome(ID, mode, verdict, f"{_read_text(seen, leaked)}; {_write_text(seen, stop, target, redirected)}")


def _read_text(seen: dict[str, object], leaked: bool) -> str:
    """What the hypervisor's read of RBX at the exit gave it."""
    rbx = seen.get("rbx")
    if "rbx" not in seen:
        return "the guest never made the exit the hypervisor waited for"
    if not isinstance(rbx, int):
        return f"the hypervisor could not read RBX ({rbx})"
    where = "from the encrypted VMSA" if seen.get("vmsa") else "at the exit"
    if leaked:
        return (f"the hypervisor read RBX {where}: {rbx:#018x}, the secret's first 8 bytes "
                f"{text_of(rbx.to_bytes(8, 'little'))}")
    return f"the hypervisor read RBX {where}: {rbx:#018x}, not the secret"


def _write_text(seen: dict[str, object], stop: Stop, target: int, redirected: bool) -> str:
    """What the hypervisor's RIP write did to the guest."""
    if redirected:
        return (f"it set RIP to debug_shell ({target:#x}) and the guest printed its secret and "
                f"exited 0x42")
    if "rip" not in seen:
        return f"it never wrote RIP; {stop.describe()}"
    err = seen["rip"]
    if err is not None:
        return f"its RIP write was refused ({err}); the guest ran on: {stop.describe()}"
    if isinstance(stop.exit, K.FailEntry):
        check = "VMSA integrity check failed: "
        why = (f"VMRUN failed the VMSA integrity check ({stop.exit.detail.removeprefix(check)})"
               if stop.exit.detail.startswith(check) else f"VMRUN failed ({stop.exit.detail})")
        return f"its RIP write was refused: {why}, so the guest never ran again"
    return f"it set RIP to debug_shell ({target:#x}), but the guest did not run it: {stop.describe()}"
