"""A13: undeSErVed trust (Wilke et al., WOOT 2021; CVE-2021-26311).

The SEV and SEV-ES launch digest is one running SHA-256 over the bytes LAUNCH_UPDATE_DATA saw,
in call order, with no addresses. So the hypervisor may put the image's 16-byte blocks anywhere
as long as it measures them in the original order: the measurement, and therefore the owner's
trust and secret, are unchanged, while the guest runs a rearranged image. Here two blocks of the
measured .data trade places: the guest's debug switch (measured as zero, so the owner believes
it off) receives the first block of a public page, and the guest prints its freshly injected
secret on the console. SEV-SNP's digest includes each page's GPA.
"""

from __future__ import annotations

from hv.attacks.lab import Lab
from hv.attacks.launch import measured_launch
from hv.attacks.outcome import Outcome
from hv.attacks.secrets import fresh_secret
from hv.kvm.sev import SevGuest

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A13"
NAME = "undeSErVed trust"
PAPER = "Wilke et al., undeSErVed trust: Exploiting Permutation-Agnostic Remote Attestation, WOOT 2021"
PRIMITIVES = ("P",)


def _swapping(a: int, b: int):
    """A placer that stores the blocks at `a` and `b` swapped but measures in content order."""
    def place(lab: Lab, sev: SevGuest, regions: list[tuple[int, bytes]]) -> None:
        for gpa, data in regions:
            if not gpa <= a < b < gpa + len(data):
                lab.vm.write_gpa(gpa, data)
                sev.launch_update_data(gpa, len(data))
                continue
            ia, ib = a - gpa, b - gpa
            moved = data[:ia] + data[ib:ib + 16] + data[ia + 16:ib] + data[ia:ia + 16] + data[ib + 16:]
            lab.vm.write_gpa(gpa, moved)
            # The content order: [..a) | a's block (now at b) | (a..b) | b's block (now at a) | (b..]
            for start, length in ((gpa, ia), (b, 16), (a + 16, ib - ia - 16), (a, 16), (b + 16, len(data) - ib - 16)):
                if length:
                    sev.launch_update_data(start, length)
    return place


def run(mode: str) -> Outcome:
    if mode == "plain":
        return Outcome(ID, mode, "n/a", "a plain VM has no launch measurement to fool")
    secret = fresh_secret()
    with Lab("service", mode, secret=secret) as lab:
        switch, public = lab.symbols["config"], lab.symbols["public_pages"]
        a, b = sorted((switch, public))
        report = measured_launch(lab, _swapping(a, b))
        stop = lab.run()
        serial = lab.serial()
    leaked = secret.hex() in serial
    line = next((ln for ln in serial.splitlines() if "debug dump" in ln), "no debug dump")
    text = (f"blocks at GPA {switch:#x} and {public:#x} swapped, measured in content order; "
            f"the owner saw its own measurement and {report.owner_said}; guest console: '{line[:60]}...'")
    if report.secret_injected and leaked:
        return Outcome(ID, mode, "succeeded", text)
    return Outcome(ID, mode, "failed", f"{text}; {stop.describe()}")
