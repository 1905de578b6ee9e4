"""`hv run --trace FILE`: what happened in a run, one JSON object per line.

Events (the key "ev" names the kind; addresses are "0x..." strings):

  exit     an exit that reached the VMM: "reason" (KVM's name) and its fields, "rip" unless
           the guest's state is protected (SEV-ES)
  fill     a TLB fill by the vCPU: gva, gpa, spa (host physical), c_bit, asid, access
  decrypt  the memory controller decrypted a DRAM page into a key slot's view (slot, spa)
  encrypt  it wrote a view's page back to DRAM as ciphertext (slot, spa)
  psp      a PSP command, logged when it completed: cmd, id, status, code
  insn     (--trace-insn) an instruction about to run: rip, bytes, text (capstone)
  end      the run's outcome: exit_reason, exit_code

The counts of exit, fill, decrypt and encrypt lines equal the run's `--json` summary (exits per
reason, tlb_fills, pages_decrypted, pages_encrypted). Tracing costs nothing when it is off: the
hardware checks one attribute that only a tracer sets. With --trace-insn every instruction calls
back into Python (and, for an encrypted guest, asks the PSP for its bytes), so it is slow.
"""

from __future__ import annotations

import json
from typing import Callable, TextIO

import capstone
from sevwire import Cmd, Status

from hv.vmm.debugview import DebugView

__all__ = ["Tracer"]

_ADDRESSES = {"gva", "gpa", "spa", "rip", "address"}


def _name(enum, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return f"{value:#x}"


def _field(key: str, value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:#x}" if key in _ADDRESSES else value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, (tuple, list)):
        return [_field("", v) for v in value]
    return repr(value)


class Tracer:
    """Writes one run's events to `out`. attach() before the guest is loaded, close() after."""

    def __init__(self, vmm, out: TextIO, warn: Callable[[str], None], instructions: bool = False):
        self._vmm = vmm
        self._out = out
        self._warn = warn
        self._psp = vmm.machine.psp
        self._psp_seen = 0
        self._instructions = instructions
        self._view: DebugView | None = None
        self._cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)

    def attach(self) -> None:
        vcpu = self._vmm.vcpu
        vcpu.set_trace(self._hardware)
        if not self._instructions:
            return
        if self._vmm.vm.type.es:
            self._warn("warning: --trace-insn: an SEV-ES guest's instructions and RIP are hidden "
                       "from the hypervisor; no instruction trace")
            return
        self._view = DebugView(self._vmm, self._warn)
        vcpu.add_code_hook(self._on_insn)

    def _emit(self, event: dict) -> None:
        log = self._psp.log
        while self._psp_seen < len(log):
            cmd, status = log[self._psp_seen]
            self._psp_seen += 1
            self._out.write(json.dumps({"ev": "psp", "cmd": _name(Cmd, cmd), "id": cmd,
                                        "status": _name(Status, status), "code": status}) + "\n")
        self._out.write(json.dumps(event) + "\n")

    def _hardware(self, ev: str, **fields) -> None:
        event = {"ev": ev}
        event.update((k, _field(k, v)) for k, v in fields.items())
        self._emit(event)

    def on_exit(self, vmm, exit_) -> None:
        event = {"ev": "exit", "reason": exit_.reason}
        event.update((k, _field(k, v)) for k, v in vars(exit_).items() if not k.startswith("_"))
        if not vmm.vcpu.guest_state_protected:
            event["rip"] = _field("rip", vmm.vcpu.get_regs()["rip"])
        self._emit(event)

    def _on_insn(self, addr: int, size: int) -> None:
        code, text = b"", None
        if self._view.debuggable:
            code = self._view.read(addr, size)
        if not self._view.debuggable or len(code) != size:
            code = b""  # ciphertext (NODBG) says nothing; the RIP is what the hypervisor has
        for _a, _n, mnemonic, ops in self._cs.disasm_lite(code, addr, 1):
            text = f"{mnemonic} {ops}".strip()
        self._emit({"ev": "insn", "rip": f"{addr:#x}", "bytes": code.hex(), "text": text})

    def close(self, result=None) -> None:
        end = {"ev": "end"}
        if result is not None:
            end.update(exit_reason=result.exit_reason, exit_code=result.exit_code)
        self._emit(end)
        self._out.flush()
