"""A13: undeSErVed trust (Wilke et al., WOOT 2021; CVE-2021-26311).

The SEV and SEV-ES launch digest is one running SHA-256 over the bytes LAUNCH_UPDATE_DATA saw,
in call order, with no addresses. So the hypervisor may put the image's 16-byte blocks anywhere
as long as it measures them in the original order: the measurement, and therefore the owner's
trust and secret, are unchanged, while the guest runs a rearranged image. Here two blocks of the
measured .data trade places: the guest's debug switch (measured as zero, so the owner believes
it off) receives the first block of a public page, and the guest prints its freshly injected
secret on the console. SEV-SNP's digest includes each page's GPA.

Under SEV-SNP the hypervisor cannot measure one thing and store another: SNP_LAUNCH_UPDATE hashes
each page as it lies in memory, with its GPA. The same swap, done in the pages it hands the PSP,
changes the launch digest; the guest asks for its secret with a report that carries that digest,
and the owner refuses.
"""

from __future__ import annotations

from hv.attacks.findings import Findings, Seen
from hv.attacks.lab import Lab
from hv.attacks.launch import SnpPages, measured_launch, snp_launch_with
from hv.attacks.outcome import Outcome
from hv.attacks.verdict import Trial, judge
from hv.hw.addr import GPA
from hv.kvm import Mode
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
                lab.vm.write_gpa(GPA(gpa), data)
                sev.launch_update_data(gpa, len(data))
                continue
            ia, ib = a - gpa, b - gpa
            moved = data[:ia] + data[ib:ib + 16] + data[ia + 16:ib] + data[ia:ia + 16] + data[ib + 16:]
            lab.vm.write_gpa(GPA(gpa), moved)
            # The content order: [..a) | a's block (now at b) | (a..b) | b's block (now at a) | (b..]
            for start, length in ((gpa, ia), (b, 16), (a + 16, ib - ia - 16), (a, 16), (b + 16, len(data) - ib - 16)):
                if length:
                    sev.launch_update_data(start, length)
    return place


def _swapped_pages(a: int, b: int):
    """A page rewrite that swaps the 16-byte blocks at `a` and `b` in the launched pages."""
    def rewrite(pages: SnpPages) -> SnpPages:
        contents = {gpa: bytearray(data) for gpa, data, _kind in pages}
        pa, pb = contents[a & ~0xFFF], contents[b & ~0xFFF]
        oa, ob = a & 0xFFF, b & 0xFFF
        pa[oa:oa + 16], pb[ob:ob + 16] = bytes(pb[ob:ob + 16]), bytes(pa[oa:oa + 16])
        return [(gpa, bytes(contents[gpa]), kind) for gpa, _data, kind in pages]
    return rewrite


def _console_line(console: str, *words: str) -> str:
    return next((ln for ln in console.splitlines() if any(w in ln for w in words)),
                "no console line about the secret")


def _attack(trial: Trial) -> Findings:
    if trial.mode == Mode.PLAIN:
        return Findings("", na="a plain VM has no launch measurement to fool")
    with trial.lab("service") as lab:
        switch, public = lab.symbols["config"], lab.symbols["public_pages"]
        if trial.mode == Mode.SEV_SNP:
            snp_launch_with(lab, _swapped_pages(switch, public))
            report = None
        else:
            a, b = sorted((switch, public))
            report = measured_launch(lab, _swapping(a, b))
        stop = lab.run()
        console = lab.serial()
    seen = (Seen("the guest's console", console.encode(), space="offset"),)
    completed = stop.reason == "exit"
    if report is None:
        line = _console_line(console, "no secret", "debug dump")
        refused = "no secret" in line
        return Findings(f"blocks at GPA {switch:#x} and {public:#x} swapped in the pages given to "
                        f"SNP_LAUNCH_UPDATE, which measures each page with its GPA: guest console: "
                        f"'{line[:100]}'; {stop.describe()}", seen=seen, completed=completed,
                        defence="the owner refused the report's launch digest" if refused else "")
    line = _console_line(console, "debug dump")
    return Findings(f"blocks at GPA {switch:#x} and {public:#x} swapped, measured in content order; "
                    f"the owner saw its own measurement and {report.owner_said}; guest console: "
                    f"'{line[:60]}...'; {stop.describe()}", seen=seen, completed=completed,
                    defence="" if report.secret_injected else f"the owner {report.owner_said}")


def run(mode: str) -> Outcome:
    return judge(ID, mode, _attack)
