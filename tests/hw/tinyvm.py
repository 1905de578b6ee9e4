"""A tiny guest on the bare machine layer, for tests of the memory path through a real CPU.

The guest loops over a command mailbox in a shared page (GPA 0x5000): op (0 = write, 1 = read),
address, value; it performs the access, stores what it read at 0x5018, and exits with OUT 0x80.

    loop: mov rax,[0x5000]; mov rbx,[0x5008]; mov rcx,[0x5010]; test rax,rax; jne rd
          mov [rbx],rcx; jmp done
    rd:   mov rcx,[rbx]; mov [0x5018],rcx
    done: out 0x80,al; jmp loop

Data pages GPA 0x100000..0x104000 are mapped twice: at VA 0x100000 with the C-bit (private) and
at VA 0x180000 without it (a C=0 alias of the same guest pages).
"""

from __future__ import annotations

import struct

from hv.hw.cpu import Cpu, GuestControl
from hv.hw.engine import AesEngine, KeySlotPort, TweakMode
from hv.hw.exits import IoExit
from hv.hw.memctl import MemoryController
from hv.hw.npt import NestedPageTable
from hv.hw.ports import DmaPort, HostPort

CODE = bytes.fromhex(
    "488b042500500000488b1c2508500000488b0c25105000004885c0750548890beb0b"
    "488b0b48890c2518500000e680ebcf")
CODE_GPA, MAILBOX_GPA = 0x1000, 0x5000
PML4, PDPT, PD, PT = 0x10000, 0x11000, 0x12000, 0x13000
DATA_GPA, DATA_PAGES = 0x100000, 4
PRIVATE_VA, ALIAS_VA = 0x100000, 0x180000
SPA_BASE = 0x400000
ASID = 3
CBIT = 47


class TinyVm:
    def __init__(self, encrypted: bool = True, tsme: bool = False,
                 tweak: TweakMode = TweakMode.XEX_RANDOM, asid: int = ASID, engine=None, mc=None,
                 spa_base: int = SPA_BASE):
        self.spa_base = spa_base
        self.engine = engine or AesEngine(15, tweak)
        self.mc = mc or MemoryController(8 << 20, self.engine, tsme=tsme)
        self.keys = KeySlotPort(self.engine)
        self.host = HostPort(self.mc)
        self.dma = DmaPort(self.mc)
        self.encrypted = encrypted
        self.asid = asid
        slot = None
        if encrypted:
            self.keys.program_key(asid, bytes([asid]) * 16)
            slot = asid
        self.npt = NestedPageTable(self.mc.size, self.mc.bump)
        self.npt.map(0, self.spa(0), 2 << 20)
        c = (1 << CBIT) if encrypted else 0
        P, RW = 1, 2
        pml4 = [0] * 512; pml4[0] = PDPT | P | RW | c
        pdpt = [0] * 512; pdpt[0] = PD | P | RW | c
        pd = [0] * 512; pd[0] = PT | P | RW | c
        pt = [0] * 512
        pt[CODE_GPA >> 12] = CODE_GPA | P | c
        pt[MAILBOX_GPA >> 12] = MAILBOX_GPA | P | RW
        for i in range(DATA_PAGES):
            gpa = DATA_GPA + i * 0x1000
            pt[(PRIVATE_VA >> 12) + i] = gpa | P | RW | c
            pt[(ALIAS_VA >> 12) + i] = gpa | P | RW
        for gpa, entries in ((PML4, pml4), (PDPT, pdpt), (PD, pd), (PT, pt)):
            self.mc.write(self.spa(gpa), struct.pack("<512Q", *entries), slot)
        self.mc.write(self.spa(CODE_GPA), CODE, slot)
        self.cpu = Cpu(self.mc, GuestControl(asid=asid if encrypted else 0, npt=self.npt,
                                             sev=encrypted, cbitpos=CBIT))
        self.cpu.set_regs({"rip": CODE_GPA})
        self.cpu.set_sregs({"cr3": PML4})

    def spa(self, gpa: int) -> int:
        return self.spa_base + gpa

    def _command(self, op: int, va: int, value: int = 0) -> int:
        self.host.write(self.spa(MAILBOX_GPA), struct.pack("<QQQ", op, va, value))
        e = self.cpu.run()
        assert isinstance(e, IoExit) and e.port == 0x80, e
        return struct.unpack("<Q", self.host.read(self.spa(MAILBOX_GPA) + 0x18, 8))[0]

    def guest_write(self, va: int, value: int) -> None:
        self._command(0, va, value)

    def guest_read(self, va: int) -> int:
        return self._command(1, va)
