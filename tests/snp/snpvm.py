"""The hw tier's TinyVm as an SEV-SNP guest: its private pages assigned and validated in the RMP
as a launch leaves them, plus a PVALIDATE stub at GPA 0x1800 driven by the same mailbox:

    mov rax,[0x5000]; mov rcx,[0x5008]; mov rdx,[0x5010]; pvalidate
    mov [0x5018],rax; setc bl; movzx ebx,bl; mov [0x5020],rbx; out 0x80,al; jmp (start)
"""

from __future__ import annotations

import struct

from hv.hw.cpu import Cpu, GuestControl
from hv.hw.exits import IoExit
from hv.hw.rmp import RmpEntry
from tinyvm import ASID, CBIT, CODE_GPA, DATA_GPA, DATA_PAGES, MAILBOX_GPA, PD, PDPT, PML4, PT, TinyVm

PVALIDATE_STUB = bytes.fromhex(
    "488b042500500000" "488b0c2508500000" "488b142510500000" "f20f01ff"
    "4889042518500000" "0f92c3" "0fb6db" "48891c2520500000" "e680")
PVALIDATE_GPA = CODE_GPA + 0x800
PVALIDATE_STUB += b"\xeb" + bytes([(-(len(PVALIDATE_STUB) + 2)) & 0xFF])
PRIVATE_GPAS = [CODE_GPA, PML4, PDPT, PD, PT] + [DATA_GPA + i * 0x1000 for i in range(DATA_PAGES)]


class SnpVm(TinyVm):
    def __init__(self, snp: bool = True, **kw):
        super().__init__(encrypted=True, **kw)
        self.mc.write(self.spa(PVALIDATE_GPA), PVALIDATE_STUB, ASID)
        self.rmp = self.mc.enable_rmp()
        for gpa in PRIVATE_GPAS:
            self.rmp.firmware_set(self.spa(gpa), RmpEntry(assigned=True, asid=ASID, gpa=gpa,
                                                          validated=True))
        self.cpu = Cpu(self.mc, GuestControl(asid=ASID, npt=self.npt, sev=True, sev_snp=snp,
                                             cbitpos=CBIT))
        self.cpu.set_regs({"rip": CODE_GPA})
        self.cpu.set_sregs({"cr3": PML4})

    def pvalidate(self, va: int, size: int = 0, validate: bool = True) -> tuple[int, int]:
        """Run PVALIDATE in the guest: (EAX, CF)."""
        self.host.write(self.spa(MAILBOX_GPA), struct.pack("<QQQ", va, size, int(validate)))
        self.cpu.set_regs({"rip": PVALIDATE_GPA})
        e = self.cpu.run()
        assert isinstance(e, IoExit) and e.port == 0x80, e
        eax, cf = struct.unpack("<QQ", self.host.read(self.spa(MAILBOX_GPA) + 0x18, 16))
        self.cpu.set_regs({"rip": CODE_GPA})
        return eax & 0xFFFFFFFF, cf

    def run_command(self, op: int, va: int, value: int = 0):
        """One mailbox command; the exit, whatever it is."""
        self.host.write(self.spa(MAILBOX_GPA), struct.pack("<QQQ", op, va, value))
        return self.cpu.run()
