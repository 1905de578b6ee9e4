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

from hv.attacks.lab import OP_REGS, PORT_REGS, Lab, Request
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
            try:
                seen["rbx"] = lab.vcpu.get_regs()["rbx"]
            except Exception as err:  # SEV-ES: the state is in the VMSA, not ours to read
                seen["rbx"] = f"refused ({err})"
            try:
                lab.vcpu.set_regs({"rip": target})
                seen["rip"] = "written"
            except Exception as err:
                seen["rip"] = f"refused ({err})"

        lab.launch()

        def script():
            yield Request(OP_REGS)

        stop = lab.run(script(), on_exit=on_exit)
        serial = lab.serial()
    rbx = seen.get("rbx")
    leaked = isinstance(rbx, int) and rbx.to_bytes(8, "little") == secret[:8]
    redirected = stop.reason == "exit" and stop.code == 0x42 and secret.hex() in serial
    rbx_text = f"RBX={rbx.to_bytes(8, 'little')!r}" if isinstance(rbx, int) else f"RBX {rbx}"
    redirect_text = (f"RIP set to debug_shell ({target:#x}): the guest printed its secret and exited 0x42"
                     if redirected else f"RIP write {seen.get('rip', 'not tried')}: {stop.describe()}")
    verdict = "succeeded" if leaked or redirected else "failed"
    return Outcome(ID, mode, verdict,
                   f"{rbx_text} ({'the secret' if leaked else 'not the secret'}); {redirect_text}")
