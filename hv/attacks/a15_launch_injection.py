"""A15: unmeasured code injection at launch.

A hypervisor that wants its own code in an SEV guest has two ways in, and the launch closes both:
(a) writing plaintext code into guest memory outside LAUNCH_UPDATE_DATA: instruction fetches are
always private, so the guest decrypts the bytes with its VEK and runs garbage; (b) adding the
code through LAUNCH_UPDATE_DATA: it is encrypted properly but changes the launch digest, the
measurement no longer proves the owner's image, and the owner refuses to inject the secret.
A plain VM has no such defence: the stub runs.
"""

from __future__ import annotations

from hv.attacks.lab import Lab
from hv.attacks.launch import honest_placer, measured_launch
from hv.attacks.outcome import Outcome
from hv.attacks.secrets import fresh_secret
from hv.kvm.sev import SevGuest

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "STUB", "run"]

ID = "A15"
NAME = "launch code injection"
PAPER = "AMD SEV API 55766 (LAUNCH_UPDATE_DATA, LAUNCH_MEASURE); Buhren et al., CCS 2019, threat model"
PRIMITIVES = ("W", "P")

# mov edx, 0x501 ; mov eax, 0x42 ; out dx, eax : "exit with status 0x42" on hv's debug-exit port
STUB = bytes.fromhex("ba01050000" "b842000000" "ef")
MARK = 0x42


def _raw_write(mode: str) -> str:
    with Lab("service", mode, secret=fresh_secret()) as lab:
        lab.launch()
        lab.vm.write_gpa(lab.vmm.loaded.entry, STUB)  # after the launch: unmeasured, unencrypted
        stop = lab.run(max_exits=10_000)
    return "ran" if stop.reason == "exit" and stop.code == MARK else stop.describe()


def _measured(mode: str) -> str:
    with Lab("service", mode, secret=fresh_secret()) as lab:
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
    return f"owner {report.owner_said}"


def run(mode: str) -> Outcome:
    raw = _raw_write(mode)
    if mode == "plain":
        verdict = "succeeded" if raw == "ran" else "failed"
        return Outcome(ID, mode, verdict, f"stub written at the entry point: {'it ran (exit 0x42)' if raw == 'ran' else raw}")
    measured = _measured(mode)
    ran = raw == "ran" or "injected" in measured
    return Outcome(ID, mode, "succeeded" if ran else "failed",
                   f"(a) plaintext stub written after launch: {'it ran' if raw == 'ran' else 'decrypted to garbage, ' + raw}; "
                   f"(b) stub measured with LAUNCH_UPDATE_DATA: {measured}")
