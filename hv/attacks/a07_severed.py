"""A07: SEVered (Morbitzer et al., EuroSec 2018; "Extracting Secrets from Encrypted Virtual
Machines", CODASPY 2019).

The hypervisor owns the nested page table. It points the GPA of the page the guest's service
hands out (a public page) at the host page that backs the guest's secret. The guest reads "its"
public page with its own key, and because the encryption tweak is the host physical address,
not the guest one, the secret page decrypts correctly and the guest ships it out in plaintext.
SEV-ES does not stop it; SEV-SNP's RMP (which binds each host page to one GPA) does.
"""

from __future__ import annotations

from hv.attacks.evidence import text_of
from hv.attacks.findings import Findings
from hv.attacks.lab import OP_READ_PAGE, Request
from hv.attacks.outcome import Outcome
from hv.attacks.verdict import SECRET_SIZE, Trial, judge
from hv.hw.addr import GPA

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

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
