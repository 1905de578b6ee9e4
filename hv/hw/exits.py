"""What the hardware reports when a guest stops running: one small frozen dataclass per reason.

Named after AMD's #VMEXIT codes (SVM_EXIT_*), which is what the hypervisor layer switches on.
For instruction intercepts the CPU has already moved RIP past the instruction (next-RIP decode
assist); results (IN data, CPUID and RDMSR values) are written into registers by the hypervisor
before it runs the vCPU again.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CpuidExit", "HltExit", "InterruptedExit", "IoExit", "MsrExit", "NpfExit", "ShutdownExit",
    "SvmExit", "VmExit", "VmgexitExit", "VmmcallExit", "VmrunFailed", "BudgetExit",
    "InternalErrorExit",
]


class SvmExit:
    CPUID = 0x72
    HLT = 0x78
    SHUTDOWN = 0x7F
    IOIO = 0x7B
    MSR = 0x7C
    VMMCALL = 0x81
    NPF = 0x400
    VMGEXIT = 0x403
    ERR = -1


@dataclass(frozen=True)
class VmExit:
    """Base of every exit."""


@dataclass(frozen=True)
class IoExit(VmExit):
    port: int
    size: int  # 1, 2 or 4
    is_in: bool
    value: int  # OUT data; 0 for IN
    code = SvmExit.IOIO


@dataclass(frozen=True)
class CpuidExit(VmExit):
    leaf: int
    subleaf: int
    code = SvmExit.CPUID


@dataclass(frozen=True)
class MsrExit(VmExit):
    msr: int
    is_write: bool
    value: int
    code = SvmExit.MSR


@dataclass(frozen=True)
class VmmcallExit(VmExit):
    code = SvmExit.VMMCALL


@dataclass(frozen=True)
class VmgexitExit(VmExit):
    code = SvmExit.VMGEXIT


@dataclass(frozen=True)
class HltExit(VmExit):
    code = SvmExit.HLT


@dataclass(frozen=True)
class NpfExit(VmExit):
    """Nested page fault: `gpa` had no nested mapping or the access broke its permissions."""
    gpa: int
    error_code: int  # EXITINFO1: P(0) W(1) U(2) ID(4), bit 32 final translation, bit 33 table walk
    insn_bytes: bytes = b""  # decode assist: the faulting instruction's bytes (GuestInstrBytes)
    code = SvmExit.NPF


@dataclass(frozen=True)
class ShutdownExit(VmExit):
    """Triple fault: the guest could not deliver an exception at all."""
    reason: str
    code = SvmExit.SHUTDOWN


@dataclass(frozen=True)
class VmrunFailed(VmExit):
    """VMRUN refused the guest state (e.g. an encrypted guest whose ASID has no key)."""
    reason: str
    code = SvmExit.ERR


@dataclass(frozen=True)
class InterruptedExit(VmExit):
    """The vCPU was kicked from outside (a watchdog): not a guest event."""


@dataclass(frozen=True)
class BudgetExit(VmExit):
    """The opt-in instruction budget ran out."""
    instructions: int


@dataclass(frozen=True)
class InternalErrorExit(VmExit):
    """The emulator stopped for a reason it cannot attribute to the guest."""
    reason: str
