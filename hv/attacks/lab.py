"""The malicious hypervisor's workbench: one guest, one real launch, and the run loop.

The lab is a VMM that does what the SEV threat model lets a hypervisor do and nothing more: it
builds the VM through hv.vmm/hv.kvm, launches it through the PSP (hv plays the honest guest
owner, who injects the secret only for the expected measurement), then runs the vCPU itself so
that it can act at every exit, including the nested page faults it causes by unmapping or
protecting pages (hv.vmm's own loop treats those as crashes). Everything an attack learns comes
from that API: registers from the vCPU, memory through the host port (ciphertext of private
pages), the nested page table, the DMA and cold-boot ports, and PSP commands.

The guests' secrets are the lab's ground truth: a Lab is made by the judge's Trial
(hv.attacks.verdict) with the trial's secret, which goes to the VMM, playing the guest owner, and
from there into the guest. The attacks never read it; the judge compares what they found with it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator

from elftools.elf.elffile import ELFFile

from hv import boot
from hv.hw.grants import PhysicalAccess, TweakMode
from hv.hw.addr import GPA, SPA
from hv.kvm import MemoryFault, Mode, exits as K
from hv.kvm.sev import SevGuest
from hv.owner import LocalOwner
from hv.vmm import Vmm, VmmConfig
from hv.vmm.runloop import Watchdog

__all__ = [
    "GUESTS_DIR", "Lab", "OP_BRANCH", "OP_CHECK_PIN", "OP_EXIT", "OP_LADDER", "OP_READ_PAGE",
    "OP_REGS", "PORT_REGS", "PORT_STEP", "Request", "Response", "SHARED_MARKER", "Stop",
    "describe_exit", "guest_image", "guest_symbols", "psp_state_path",
]

GUESTS_DIR = Path(__file__).resolve().parents[2] / "guests"
SHARED_MARKER = b"HV-SHARED-MARKER"
MEM_SIZE = 16 << 20  # small guests: every launch encrypts less, every dump scans less
# Wall seconds one Lab.run may take: a guest the attack made run garbage (A15's plaintext stub,
# decrypted with the guest key) can loop without ever exiting, and the run would never end.
RUN_LIMIT = 60.0

# guests/service.c's protocol (a virtio-like ring: register, doorbell, request, response).
PORT_REGISTER, PORT_DOORBELL, PORT_STEP, PORT_REGS = 0x510, 0x511, 0x512, 0x513
OP_READ_PAGE, OP_CHECK_PIN, OP_LADDER, OP_BRANCH, OP_REGS, OP_EXIT = 1, 2, 3, 4, 5, 6
RING_OP, RING_STATUS, RING_VALUE, RING_DATA = 0x10, 0x18, 0x20, 0x1000


def guest_image(name: str) -> bytes:
    return (GUESTS_DIR / f"{name}.img").read_bytes()


def guest_symbols(image: bytes) -> dict[str, int]:
    """The image's symbol table: the guest's binary is public, only its secrets are not."""
    elf = ELFFile(io.BytesIO(image))
    table = elf.get_section_by_name(".symtab")
    symbols = table.iter_symbols() if table else ()  # type: ignore[attr-defined]  # a SymbolTableSection
    return {s.name: s["st_value"] for s in symbols if s.name}


def psp_state_path() -> str:
    """$HV_PSP_STATE, else the same per-user file `hv run` uses."""
    env = os.environ.get("HV_PSP_STATE")
    if env:
        return env
    from hv.vmm.hostfiles import default_psp_state, prepare_psp_state

    return prepare_psp_state(default_psp_state())


@dataclass(frozen=True)
class Request:
    op: int
    arg: int = 0


@dataclass(frozen=True)
class Response:
    status: int
    value: int
    data: bytes


def describe_exit(e: object) -> str:
    """An exit the lab cannot handle, as words for the evidence line (never the exit's repr:
    the evidence is read by people, and checked by tests, as one sentence)."""
    if isinstance(e, MemoryFault):
        kind = "fetch" if e.fetch else "write" if e.write else "read"
        by = "the RMP" if e.rmp else "the nested page table"
        return f"a nested page fault on the guest's {kind} of GPA {e.gpa:#x}, raised by {by}"
    if isinstance(e, K.FailEntry):
        return f"VMRUN failed: {e.detail}"
    if isinstance(e, K.Shutdown):
        return e.detail if e.detail.startswith("triple fault") else f"triple fault: {e.detail or 'shutdown'}"
    if isinstance(e, K.SystemEvent):
        return f"the guest asked to be terminated: {e.detail}"
    if isinstance(e, K.InternalError):
        return f"the hypervisor could not handle an exit: {e.detail}"
    if isinstance(e, K.Mmio):
        return f"an MMIO {'write' if e.is_write else 'read'} of GPA {e.gpa:#x} that no device backs"
    if isinstance(e, K.Intr):
        return f"the run was stopped from outside ({e.detail})"
    return f"an unexpected {e.reason if isinstance(e, K.KvmExit) else type(e).__name__} exit"


@dataclass(frozen=True)
class Stop:
    """Why the lab's run loop returned."""
    reason: str            # "exit", "hlt", "crash", "fault", "stopped"
    code: int | None = None
    detail: str = ""       # words (describe_exit), never a repr
    fault: MemoryFault | None = None  # the nested page fault that stopped the guest
    exit: object | None = None        # the exit that stopped it, for a caller that needs its kind

    def describe(self) -> str:
        if self.reason == "exit":
            return f"guest exited with status {self.code:#x}"
        if self.fault is not None and self.fault.rmp:
            f = self.fault
            return (f"the guest's {'fetch' if f.fetch else 'write' if f.write else 'read'} of GPA "
                    f"{f.gpa:#x} was a nested page fault raised by the RMP (the host page is not "
                    f"that GPA's)")
        if self.reason == "hlt":
            return "guest halted"
        what = {"crash": "guest crashed", "fault": "guest stopped", "stopped": "guest stopped"}
        return what.get(self.reason, f"guest {self.reason}") + (f": {self.detail}" if self.detail else "")


Script = Generator[Request, Response, None]


class Lab:
    """One guest on one machine, launched for real, run by a hypervisor that means harm."""

    def __init__(self, image: str, mode: str, *, secret: bytes | None = None,
                 policy: int | None = None, tweak: TweakMode = TweakMode.XEX_RANDOM,
                 tsme: bool = False, physical: bool = False, mem_size: int = MEM_SIZE):
        self.image_name = image
        self.image = guest_image(image)
        self.symbols = guest_symbols(self.image)
        self.mode = mode
        self.config = VmmConfig(image=self.image, mem_size=mem_size, vm_type=mode, policy=policy,
                                tweak=tweak, tsme=tsme, secret=secret,
                                psp_state=psp_state_path() if mode != Mode.PLAIN else None,
                                image_name=f"{image}.img")
        self.vmm = Vmm(self.config)
        self._physical = self.vmm.physical_access() if physical else None
        self.vm = self.vmm.vm
        self.vcpu = self.vmm.vcpu
        self.ring_gpa: int | None = None
        self.stop: Stop | None = None
        self.own_sev: SevGuest | None = None  # a SevGuest the lab launched itself (hv.attacks.launch)

    # -- launch --------------------------------------------------------------------------------
    def launch(self) -> None:
        """The honest launch (hv.vmm's), measured and with the owner's secret for SEV modes."""
        self.vmm.load()

    def physical(self) -> PhysicalAccess:
        """A physical attacker's access to this host (DMA, the DRAM cells): not a hypervisor's,
        so a Lab has it only when made with physical=True (the attacks whose PRIMITIVES say Phys)."""
        if self._physical is None:
            raise PermissionError("this lab was not granted physical access (Lab(..., physical=True))")
        return self._physical

    def guest_owner(self) -> LocalOwner:
        """The guest's owner, honest and apart, for a launch the lab drives itself
        (hv.attacks.launch): it expects the genuine image's launch digest and holds the secret
        and, once asked for a session, TEK and TIK; the hypervisor reaches it only through
        `start` and `answer`."""
        digest = boot.launch_digest(self.image, self.config.mem_size, self.vm.cbitpos,
                                    es=self.mode == Mode.SEV_ES)
        return LocalOwner(self.config.secret or b"", digest)

    def close(self) -> None:
        if self.own_sev is not None:
            self.own_sev.decommission()
            self.own_sev = None
        self.vmm.close()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what the hypervisor sees ---------------------------------------------------------------
    def spa(self, gpa: int) -> SPA:
        """The host physical page backing `gpa` now (the NPT is the hypervisor's own)."""
        hit = self.vm.npt_lookup(GPA(gpa & ~0xFFF))
        if hit is None:
            raise ValueError(f"GPA {gpa:#x} is not mapped")
        return SPA(hit[0] | (gpa & 0xFFF))

    def serial(self) -> str:
        return self.vmm.serial.decode("utf-8", "replace")

    # -- the run loop ---------------------------------------------------------------------------
    def run(self, script: Script | None = None, *,
            on_exit: Callable[[object], bool | None] | None = None,
            on_fault: Callable[[MemoryFault], bool] | None = None,
            max_exits: int = 200_000) -> Stop:
        """Run until the guest stops. `script` drives guests/service.c's ring (each yielded
        Request is answered with the guest's Response; when it ends the guest is told to exit);
        `on_exit(exit)` sees every exit first and returns True to stop the guest there;
        `on_fault(fault)` resolves a nested page fault the lab caused (True: retry)."""
        watchdog = Watchdog(self.vcpu, RUN_LIMIT)
        try:
            return self._run(script, on_exit, on_fault, max_exits, watchdog)
        finally:
            watchdog.cancel()

    def _run(self, script, on_exit, on_fault, max_exits: int, watchdog: Watchdog) -> Stop:
        started = False
        for _ in range(max_exits):
            e = self.vcpu.run()
            if watchdog.fired:
                return self._stopped(Stop("stopped", detail=f"still running after {RUN_LIMIT:g} s "
                                                            "without an exit hv could act on"))
            if on_exit is not None and on_exit(e):
                return self._stopped(Stop("stopped", detail=f"by the attack at a {e.reason} exit"))
            if isinstance(e, K.Io):
                if e.port == PORT_REGISTER and not e.is_in:
                    self.ring_gpa = e.data
                    continue
                if e.port == PORT_DOORBELL and not e.is_in:
                    self._doorbell(script, started)
                    started = True
                    continue
                if e.port in (PORT_STEP, PORT_REGS):
                    continue
                if e.is_in:
                    e.data = self.vmm.pio.read(e.port, e.size)
                    continue
                self.vmm.pio.write(e.port, e.size, e.data)
                if self.vmm.debug_exit.code is not None:
                    return self._stopped(Stop("exit", self.vmm.debug_exit.code))
            elif isinstance(e, MemoryFault):
                if on_fault is not None and on_fault(e):
                    continue
                return self._stopped(Stop("fault", detail=describe_exit(e), fault=e, exit=e))
            elif isinstance(e, K.Hlt):
                return self._stopped(Stop("hlt", 0))
            elif isinstance(e, (K.Rdmsr, K.Wrmsr)):
                e.error = True
            elif isinstance(e, K.Hypercall):
                e.ret = -1000
            else:
                return self._stopped(Stop("crash", detail=describe_exit(e), exit=e))
        return self._stopped(Stop("stopped", detail=f"still running after {max_exits} exits"))

    def _stopped(self, stop: Stop) -> Stop:
        self.stop = stop
        return stop

    def _ring(self) -> int:
        if self.ring_gpa is None:
            raise RuntimeError("the guest has not said where its request ring is")
        return self.ring_gpa

    def _doorbell(self, script: Script | None, started: bool) -> None:
        """The guest answered the last request (if any) and waits for the next one."""
        req = Request(OP_EXIT, 0)
        if script is not None:
            try:
                req = script.send(self.response()) if started else next(script)
            except StopIteration:
                pass
        self.vm.write_gpa(GPA(self._ring() + RING_OP), req.op.to_bytes(4, "little") + req.arg.to_bytes(4, "little"))

    def response(self) -> Response:
        raw = self.vm.read_gpa(GPA(self._ring()), 0x28)
        data = self.vm.read_gpa(GPA(self._ring() + RING_DATA), 0x1000)
        return Response(status=int.from_bytes(raw[RING_STATUS:RING_STATUS + 4], "little"),
                        value=int.from_bytes(raw[RING_VALUE:RING_VALUE + 8], "little"), data=data)
