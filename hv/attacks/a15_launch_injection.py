"""A15: unmeasured code injection at launch.

A hypervisor that wants its own code in an SEV guest has two ways in, and the launch closes both:
(a) writing plaintext code into guest memory outside LAUNCH_UPDATE_DATA: instruction fetches are
always private, so the guest decrypts the bytes with its VEK and runs garbage; (b) adding the
code through LAUNCH_UPDATE_DATA: it is encrypted properly but changes the launch digest, the
measurement no longer proves the owner's image, and the owner refuses to inject the secret.
A plain VM has no such defence: the stub runs.

Under SEV-SNP (a) does not even get that far: the hypervisor's write to a guest page faults in
the RMP. For (b) the hypervisor adds a measured page with a stub that leaves a mark in the shared
boot information page and jumps to the real entry, and points the (measured) initial VMSA's RIP at
it. The stub runs, but the launch digest is no longer the image's: when the guest asks its owner
for the secret, the attestation report shows that digest and the owner refuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from hv.attacks.findings import Findings
from hv.attacks.lab import Lab
from hv.attacks.launch import SnpPages, honest_placer, measured_launch, snp_launch_with
from hv.attacks.outcome import Outcome
from hv.attacks.verdict import Trial, judge
from hv.hw.addr import GPA
from hv.kvm import Mode, RmpViolation
from hv.kvm.sev import SevGuest
from sevwire import SnpPageType

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "STUB", "run"]

ID = "A15"
NAME = "launch code injection"
PAPER = "AMD SEV API 55766 (LAUNCH_UPDATE_DATA, LAUNCH_MEASURE); Buhren et al., CCS 2019, threat model"
PRIMITIVES = ("W", "P")

# mov edx, 0x501 ; mov eax, 0x42 ; out dx, eax : "exit with status 0x42" on hv's debug-exit port
STUB = bytes.fromhex("ba01050000" "b842000000" "ef")
MARK = 0x42

# SNP (b): mov dword [MARK_GPA], "HV15" ; mov rax, entry ; jmp rax. No exits: under SNP an OUT
# before the guest's IDT exists would be a #VC nobody handles.
MARK_GPA = 0x8F00                 # inside the shared boot information page, past its fields
MARK_WORD = b"HV15"
VMSA_RIP = 0x178                  # the save area's RIP


def _snp_stub(entry: int) -> bytes:
    return (bytes.fromhex("c70425") + MARK_GPA.to_bytes(4, "little") + MARK_WORD
            + bytes.fromhex("48b8") + entry.to_bytes(8, "little") + bytes.fromhex("ffe0"))


@dataclass(frozen=True)
class _Try:
    """One way in: what happened, whether the hypervisor's code ran with the guest's trust (the
    stub ran, or the owner released the secret to the launch that carries it), and the defence."""
    text: str
    won: bool
    defence: str = ""


def _raw_write(trial: Trial) -> _Try:
    with trial.lab("service") as lab:
        lab.launch()
        try:
            lab.vm.write_gpa(GPA(lab.vmm.loaded.entry), STUB)  # after the launch: unmeasured, unencrypted
        except RmpViolation as e:                        # SNP: the guest's page is not ours
            return _Try(f"the write faulted ({e})", False, f"RMP: {e}")
        stop = lab.run(max_exits=10_000)
    if stop.reason == "exit" and stop.code == MARK:
        return _Try(f"it ran (exit {MARK:#x})", True)
    if trial.mode == Mode.PLAIN:
        return _Try(stop.describe(), False)
    # Instruction fetches are always private: the plaintext stub decrypted to garbage.
    return _Try(f"decrypted to garbage, {stop.describe()}", False,
                f"private fetch decrypted the stub to garbage ({stop.describe()})")


def _measured_snp(trial: Trial) -> _Try:
    with trial.lab("service") as lab:
        entry = lab.vmm.loaded.entry
        stub_gpa = None

        def rewrite(pages: SnpPages) -> SnpPages:
            nonlocal stub_gpa
            stub_gpa = max(gpa for gpa, _data, kind in pages if kind == SnpPageType.NORMAL) + 0x1000
            out = [p for p in pages if p[2] != SnpPageType.VMSA]
            out.append((stub_gpa, _snp_stub(entry).ljust(0x1000, b"\0"), int(SnpPageType.NORMAL)))
            for gpa, data, kind in pages:
                if kind == SnpPageType.VMSA:
                    rip = stub_gpa.to_bytes(8, "little")
                    out.append((gpa, data[:VMSA_RIP] + rip + data[VMSA_RIP + 8:], kind))
            return out

        snp_launch_with(lab, rewrite)
        stop = lab.run(max_exits=10_000)
        ran = lab.vm.read_gpa(GPA(MARK_GPA), 4) == MARK_WORD
        console = lab.serial()
        release = lab.vmm.secret_release
        released = release is not None and any(o["result"] == "released" for o in release.outcomes)
    line = next((ln for ln in console.splitlines() if "secret" in ln), "nothing about the secret")
    text = (f"the stub at GPA {stub_gpa:#x} {'ran' if ran else 'did not run'} and "
            + ("the secret was released" if released else "no secret reached it")
            + f"; guest console: '{line[:90]}'; {stop.describe()}")
    return _Try(text, released, "" if released else "the owner released no secret to the report's launch digest")


def _measured(trial: Trial) -> _Try:
    with trial.lab("service") as lab:
        entry = lab.vmm.loaded.entry

        def place(lab: Lab, sev: SevGuest, regions: list[tuple[int, bytes]]) -> None:
            patched = []
            for gpa, data in regions:
                if gpa <= entry < gpa + len(data):
                    off = entry - gpa
                    data = data[:off] + STUB + data[off + len(STUB):]
                patched.append((gpa, data))
            honest_placer(lab, sev, patched)

        report = measured_launch(lab, place)
    return _Try(f"owner {report.owner_said}", report.secret_injected,
                "" if report.secret_injected else f"the owner {report.owner_said}")


def _attack(trial: Trial) -> Findings:
    raw = _raw_write(trial)
    if trial.mode == Mode.PLAIN:
        return Findings(f"stub written at the entry point: {raw.text}", achieved=raw.won,
                        completed=raw.won, defence=raw.defence)
    if trial.mode == Mode.SEV_SNP:
        measured = _measured_snp(trial)
        how = "stub page measured with SNP_LAUNCH_UPDATE and the VMSA's RIP pointed at it"
    else:
        measured = _measured(trial)
        how = "stub measured with LAUNCH_UPDATE_DATA"
    won = raw.won or measured.won
    return Findings(f"(a) plaintext stub written after launch: {raw.text}; (b) {how}: {measured.text}",
                    achieved=won, completed=won,
                    defence="; ".join(d for d in (raw.defence, measured.defence) if d))


def run(mode: str) -> Outcome:
    return judge(ID, mode, _attack)
