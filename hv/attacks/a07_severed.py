"""A07: SEVered (Morbitzer et al., EuroSec 2018; "Extracting Secrets from Encrypted Virtual
Machines", CODASPY 2019).

The hypervisor owns the nested page table. It points the GPA of the page the guest's service
hands out (a public page) at the host page that backs the guest's secret. The guest reads "its"
public page with its own key, and because the encryption tweak is the host physical address,
not the guest one, the secret page decrypts correctly and the guest ships it out in plaintext.
SEV-ES does not stop it; SEV-SNP's RMP (which binds each host page to one GPA) does.

Against a kernel (`run_kernel`, hv.attacks.kernel_lab) there is no service to ship a page out,
so the judge plays its part: it looks at the remapped page's plaintext in the core
(hv.attacks.verdict.judge_kernel_remap). The hypervisor picks the pages from ciphertext alone
(hv.attacks.kernel_pages), at the exits the console times: the target Y is a page the init wrote
by its first console line and left alone until its second (it holds data, lately untouched), and
the page X it remaps is one the guest never wrote (DRAM still zeros: nothing runs on it, and its
plaintext, zeros, differs from Y's), else one unchanged through all three looks. At the init's
second line it points X at Y's host page in the nested page table (vm.npt_map, the same call as
against the small guests); an OS core follows that table at its coherence points (hv.hw.osmem).
At the next exit, the guest having run, it takes the nested page faults KVM holds for it
(Vm.memory_faults) and maps X back. SEV and SEV-ES: X's plaintext is Y's, decrypted with the
tweak of Y's host address. SEV-SNP: the RMP entry of Y's host page names GPA Y, so the CPU's
check is a nested page fault with the RMP bit and X keeps its own page. Plain: not applicable, a
plain guest's memory is the hypervisor's to read (A01), and the core of a plain kernel maps its
slot directly, following no nested table.
"""

from __future__ import annotations

import numpy as np

from hv.attacks.evidence import text_of
from hv.attacks.findings import Findings
from hv.attacks.kernel_lab import KernelFiles, KernelLab
from hv.attacks.kernel_pages import (PAGE, Timeline, changed, ciphertext_like, never_written,
                                     read_page, read_pages)
from hv.attacks.lab import OP_READ_PAGE, Request, describe_exit
from hv.attacks.outcome import Outcome
from hv.attacks.verdict import RAN, REMAP, SECRET_SIZE, KernelTrial, Trial, judge, judge_kernel_remap
from hv.hw.addr import GPA, SPA
from hv.kvm import MemoryFault

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run", "run_kernel"]

ID = "A07"
NAME = "SEVered"
PAPER = "Morbitzer et al., SEVered: Subverting AMD's Virtual Machine Encryption, EuroSec 2018"
PRIMITIVES = ("T", "M")


def _attack(trial: Trial) -> Findings:
    got: dict[str, bytes] = {}

    with trial.lab("service") as lab:
        public = lab.symbols["public_pages"]     # the page the service returns for READ_PAGE 0
        target = lab.symbols["secret"]           # the page the hypervisor wants

        def script():
            r = yield Request(OP_READ_PAGE, 0)
            got["honest"] = r.data[:SECRET_SIZE]
            original = lab.spa(public)
            lab.vm.npt_map(GPA(public), lab.spa(target))
            r = yield Request(OP_READ_PAGE, 0)
            got["remapped"] = r.data[:SECRET_SIZE]
            lab.vm.npt_map(GPA(public), original)

        lab.launch()
        stop = lab.run(script())
    remapped = got.get("remapped")
    answer = "got no answer" if remapped is None else f"returned {text_of(remapped)}"
    story = (f"READ_PAGE 0 with GPA {public:#x} remapped to the host page of GPA {target:#x} "
             f"{answer}")
    rmp = stop.fault is not None and stop.fault.rmp
    if remapped is None:
        story += f"; {stop.describe()}"
    return Findings(story, recovered=remapped or b"", completed=stop.reason == "exit",
                    defence=stop.describe() if rmp else "")


def run(mode: str) -> Outcome:
    return judge(ID, mode, _attack)


class _KernelRemap:
    """SEVered against a kernel, step by step (see the module's docstring)."""

    def __init__(self, lab: KernelLab):
        self.lab = lab
        self.timeline = Timeline(lab, self.step)  # the exit hook: calls step() when due
        self.looks: list[np.ndarray] = []
        self.target: int | None = None   # Y
        self.page: int | None = None     # X
        self.unused = False              # X was never written
        self.original: SPA | None = None
        self.faults: list[MemoryFault] = []

    def step(self, n: int) -> bool:
        lab = self.lab
        if n < 2:
            self.looks.append(read_pages(lab))
            return False
        if n == 2:
            first, second = self.looks
            written = changed(first, second) & ~never_written(first) & ciphertext_like(second)
            y = self._highest_unchanged(np.flatnonzero(written), second)
            still = ~changed(first, second)
            x = self._highest_unchanged(np.flatnonzero(still & never_written(second)), second)
            self.unused = x is not None
            if x is None:
                x = self._highest_unchanged(np.flatnonzero(still), second, but=y)
            if x is None or y is None:
                return True
            self.target, self.page = y, x
            self.original = self._host_page(x)
            lab.checkpoint(REMAP, x * PAGE, y * PAGE)
            lab.vm.npt_map(GPA(x * PAGE), self._host_page(y))
            return False
        assert self.page is not None and self.target is not None and self.original is not None
        lab.checkpoint(RAN, self.page * PAGE, self.target * PAGE)
        self.faults = lab.vm.memory_faults()
        lab.vm.npt_map(GPA(self.page * PAGE), self.original)
        return True

    def _highest_unchanged(self, pages: np.ndarray, last: np.ndarray, but: int | None = None) -> int | None:
        """The highest of `pages` whose ciphertext is still what the last look read."""
        for p in reversed(pages.tolist()):
            if p != but and np.array_equal(read_page(self.lab, p), last[p]):
                return p
        return None

    def _host_page(self, page: int) -> SPA:
        """The host page backing guest page `page` now (the nested page table is the hypervisor's)."""
        hit = self.lab.vm.npt_lookup(GPA(page * PAGE))
        assert hit is not None, "guest RAM is mapped whole"
        return hit[0]

    def story(self) -> str:
        if len(self.timeline.at) < 3:
            return "the kernel's init never printed two lines: nothing was remapped"
        if self.page is None or self.target is None:
            return ("no page the init wrote by its first line stayed quiet until its second, or no "
                    "other page stayed unchanged: nothing to remap")
        x, y = self.page * PAGE, self.target * PAGE
        kind = "one the guest never wrote" if self.unused else "one unchanged through three looks"
        head = (f"at the init's second line (exit {self.timeline.at[2]}) pointed GPA {x:#x} ({kind}) at the "
                f"host page of GPA {y:#x} (written by the init's first line, quiet since) in the "
                f"nested page table, and back an exit later")
        if self.faults:
            return f"{head}; KVM held {describe_exit(self.faults[0])}"
        return head + "; no nested page fault came of it"


def _attack_kernel(trial: KernelTrial) -> Findings:
    if trial.mode == "plain":
        return Findings("", na="a plain kernel's memory is the hypervisor's to read (A01), and its "
                               "core maps its slot directly, following no nested page table")
    remap = _KernelRemap(trial.lab())
    ended = remap.timeline.run()
    rmp = [f for f in remap.faults if f.rmp]
    return Findings("; ".join(filter(None, (remap.story(), ended))), completed=not ended,
                    defence=describe_exit(rmp[0]) if rmp else "")


def run_kernel(mode: str, files: KernelFiles) -> Outcome:
    return judge_kernel_remap(ID, mode, files, _attack_kernel)
