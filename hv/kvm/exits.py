"""The exits a vCPU's run() returns to user space, named after KVM's KVM_EXIT_* reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "FailEntry", "Hlt", "Hypercall", "InternalError", "Intr", "Io", "KVM_ENOSYS", "KvmExit",
    "Mmio", "Rdmsr", "Shutdown", "StringIo", "SystemEvent", "Wrmsr",
]


@dataclass
class KvmExit:
    """Base class. Exits that carry a reply (IN data, MMIO reads, RDMSR, hypercall results)
    are mutable: user space fills the reply in, and the next run() completes the instruction."""

    reason: ClassVar[str]  # KVM_EXIT_<reason>


@dataclass
class Io(KvmExit):
    """KVM_EXIT_IO. For an IN, set `data` before the next run()."""
    port: int
    size: int
    is_in: bool
    data: int = 0
    reason = "IO"


@dataclass
class StringIo(KvmExit):
    """KVM_EXIT_IO of a string instruction (INS/OUTS): `count` accesses of `size` bytes at
    `port`; `buffer` holds an OUT's data, and for an IN user space puts count * size bytes there."""
    port: int
    size: int
    is_in: bool
    count: int
    buffer: bytes = b""
    reason = "IO"


@dataclass
class Mmio(KvmExit):
    """KVM_EXIT_MMIO: an access to a GPA that no memory slot backs. For a read set `data`."""
    gpa: int
    size: int
    is_write: bool
    data: int = 0
    reason = "MMIO"


@dataclass
class Hlt(KvmExit):
    reason = "HLT"


@dataclass
class Shutdown(KvmExit):
    """KVM_EXIT_SHUTDOWN: triple fault."""
    detail: str = ""
    reason = "SHUTDOWN"


KVM_ENOSYS = -1000  # a hypercall's `ret` when the hypervisor offers none of that number


@dataclass
class Hypercall(KvmExit):
    """KVM_EXIT_HYPERCALL (VMMCALL): nr in RAX, args in RBX, RCX, RDX, RSI. Set `ret`."""
    nr: int
    args: tuple[int, ...] = field(default_factory=tuple)
    ret: int = 0
    reason = "HYPERCALL"


@dataclass
class Rdmsr(KvmExit):
    """KVM_EXIT_X86_RDMSR: set `data`, or `error = True` to inject #GP."""
    index: int
    data: int = 0
    error: bool = False
    reason = "X86_RDMSR"


@dataclass
class Wrmsr(KvmExit):
    """KVM_EXIT_X86_WRMSR: set `error = True` to inject #GP."""
    index: int
    data: int
    error: bool = False
    reason = "X86_WRMSR"


@dataclass
class FailEntry(KvmExit):
    """KVM_EXIT_FAIL_ENTRY: VMRUN refused the guest state."""
    detail: str
    reason = "FAIL_ENTRY"


@dataclass
class InternalError(KvmExit):
    """KVM_EXIT_INTERNAL_ERROR: the hypervisor could not handle an exit."""
    detail: str
    reason = "INTERNAL_ERROR"


@dataclass
class Intr(KvmExit):
    """KVM_EXIT_INTR: run() was interrupted from outside (a timeout or an instruction budget)."""
    detail: str = "interrupted"
    reason = "INTR"


@dataclass
class SystemEvent(KvmExit):
    """KVM_EXIT_SYSTEM_EVENT: the guest asked to be terminated (e.g. the GHCB termination request)."""
    detail: str
    reason = "SYSTEM_EVENT"
