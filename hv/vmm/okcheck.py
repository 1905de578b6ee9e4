"""`hv ok`: is the emulated platform ready for confidential guests? A PASS/FAIL/SKIP tree in the
style of `sevctl ok`, each failure with a hint, non-zero exit when anything fails.

Every check asks the platform the way software on a real host would: CPUID, the SYSCFG MSR, the
PSP through /dev/sev, and finally a tiny SEV guest that reads its own SEV_STATUS.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import click

from hv.hw.machine import Machine, MachineConfig
from hv.kvm import Kvm, Mode
from hv.kvm.sev import FirmwareError, SevDevice

__all__ = ["Check", "ok", "run_checks"]

SYSCFG_MEM_ENCRYPT_MOD_EN = 1 << 23


@dataclass
class Check:
    name: str
    status: str = "PASS"  # PASS, FAIL or SKIP
    detail: str = ""
    hint: str = ""
    children: list["Check"] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {"name": self.name, "status": self.status, "detail": self.detail}
        if self.hint:
            out["hint"] = self.hint
        if self.children:
            out["children"] = [c.to_json() for c in self.children]
        return out

    def failed(self) -> bool:
        return self.status == "FAIL" or any(c.failed() for c in self.children)


def _cpu_checks(machine: Machine) -> Check:
    eax, ebx, ecx, edx = machine.host_cpuid(0x8000001F)
    top = Check("CPUID 0x8000001F (memory encryption)")
    for bit, name in ((0, "SME"), (1, "SEV"), (3, "SEV-ES"), (4, "SEV-SNP")):
        c = Check(f"{name} supported (EAX bit {bit})")
        if not eax >> bit & 1:
            c.status = "SKIP" if name == "SEV-SNP" else "FAIL"
            c.hint = "this CPU model does not offer it"
        top.children.append(c)
    cbit = ebx & 0x3F
    top.children.append(Check("C-bit position", "PASS" if 32 <= cbit <= 51 else "FAIL", f"bit {cbit}",
                              "" if 32 <= cbit <= 51 else "C-bit must be a physical address bit (32..51)"))
    top.children.append(Check("physical address reduction", detail=f"{(ebx >> 6) & 0x3F} bits"))
    top.children.append(Check("encrypted guests (ECX)", "PASS" if ecx else "FAIL", f"{ecx} ASIDs",
                              "" if ecx else "no ASIDs for encrypted guests"))
    top.children.append(Check("minimum SEV-only ASID (EDX)", "PASS" if 1 < edx <= ecx else "FAIL",
                              f"{edx} (SEV-ES/SNP ASIDs 1..{edx - 1})",
                              "" if 1 < edx <= ecx else "no ASIDs are left for SEV-ES guests"))
    return top


def _psp_checks(dev: SevDevice) -> tuple[Check, bool]:
    top = Check("PSP (SEV firmware)")
    try:
        dev.ensure_init(es=True)
        st = dev.platform_status()
    except FirmwareError as e:
        top.status, top.detail = "FAIL", str(e)
        top.hint = ("the PSP's state file is unusable: move it away (a new identity is made)"
                    if e.status is None else "try `hv psp reset`")
        return top, False
    api_ok = (st.api_major, st.api_minor) >= (0, 17)
    top.children.append(Check("firmware API version", "PASS" if api_ok else "FAIL",
                              f"{st.api_major}.{st.api_minor} build {st.build}",
                              "" if api_ok else "API 0.17 or newer is needed for the measured launch"))
    state = {0: "UNINIT", 1: "INIT", 2: "WORKING"}.get(st.state, str(st.state))
    top.children.append(Check("platform state", "PASS" if st.state in (1, 2) else "FAIL", state,
                              "" if st.state in (1, 2) else "INIT failed; see `hv psp status`"))
    top.children.append(Check("owner", detail="externally owned" if st.owner & 1 else "self-owned"))
    es = bool(st.config & 1)
    top.children.append(Check("SEV-ES initialised", "PASS" if es else "FAIL",
                              "INIT with the ES flag and a 1 MiB TMR" if es else "not initialised",
                              "" if es else "`hv psp reset`, then any command INITs with SEV-ES"))
    return top, True


def _chain_check(dev: SevDevice) -> Check:
    from hv.owner import verify_chain

    top = Check("certificate chain (ARK -> ASK -> CEK -> PEK -> PDH, OCA -> PEK)")
    with tempfile.TemporaryDirectory() as d:
        for name, data in dev.export_certificates().items():
            (Path(d) / name).write_bytes(data)
        report = verify_chain(d)
    for link in report.links:
        top.children.append(Check(link.name, "PASS" if link.ok else "FAIL", link.reason,
                                  "" if link.ok else "the platform identity is corrupt: `hv psp reset`"))
    return top


def _guest_check(psp_state: str) -> Check:
    """Boot the smallest SEV guest there is and let it read SEV_STATUS itself."""
    from hv.vmm.vmm import LaunchError, Vmm, VmmConfig

    # mov ecx, 0xc0010131; rdmsr; mov dx, 0x501; out dx, al  (exit status = SEV_STATUS low byte)
    image = bytes.fromhex("b9310101c0" "0f32" "66ba0105" "ee")
    c = Check("an SEV guest sees SEV_STATUS.SEV")
    try:
        vmm = Vmm(VmmConfig(image=image, mem_size=4 << 20, vm_type=Mode.SEV, psp_state=psp_state,
                            timeout=10))
        result = vmm.run()
        vmm.close()
    except LaunchError as e:
        return Check(c.name, "FAIL", str(e), "the measured launch failed")
    ok_ = result.guest_exit_code is not None and result.guest_exit_code & 1
    c.status = "PASS" if ok_ else "FAIL"
    c.detail = f"SEV_STATUS = {result.guest_exit_code:#x}" if result.guest_exit_code is not None else result.message
    if not ok_:
        c.hint = "the guest did not run encrypted"
    return c


def _asid_check(kvm: Kvm) -> Check:
    model = kvm.machine.model
    es_free = model.min_sev_asid - 1
    sev_free = model.max_asid - model.min_sev_asid + 1
    return Check("ASIDs free", "PASS" if es_free and sev_free else "FAIL",
                 f"{es_free} for SEV-ES/SNP, {sev_free} for SEV")


def run_checks(psp_state: str) -> Check:
    machine = Machine(MachineConfig(dram_size=16 << 20, psp_state=psp_state))
    kvm = Kvm(machine)
    root = Check("hv platform")
    root.children.append(_cpu_checks(machine))
    syscfg = SYSCFG_MEM_ENCRYPT_MOD_EN  # the emulated BIOS always enables memory encryption
    root.children.append(Check("SYSCFG MemEncryptionModEn (MSR 0xC0010010 bit 23)",
                               "PASS" if syscfg & SYSCFG_MEM_ENCRYPT_MOD_EN else "FAIL", f"{syscfg:#x}"))
    root.children.append(Check("transparent SME", "SKIP", "off (enable per run with `hv run --tsme`)"))
    dev = SevDevice(kvm)
    psp, psp_ok = _psp_checks(dev)
    root.children.append(psp)
    if psp_ok:
        root.children.append(_chain_check(dev))
        root.children.append(_asid_check(kvm))
        root.children.append(_guest_check(psp_state))
    else:
        for name in ("certificate chain", "ASIDs free", "an SEV guest sees SEV_STATUS.SEV"):
            root.children.append(Check(name, "SKIP", "the PSP is not usable"))
    root.status = "FAIL" if root.failed() else "PASS"
    return root


def _render(c: Check, depth: int = 0) -> list[str]:
    mark = {"PASS": "[ PASS ]", "FAIL": "[ FAIL ]", "SKIP": "[ SKIP ]"}[c.status]
    line = f"{mark} {'  ' * depth}{'- ' if depth else ''}{c.name}"
    if c.detail:
        line += f": {c.detail}"
    lines = [line]
    if c.status == "FAIL" and c.hint:
        lines.append(f"         {'  ' * depth}  hint: {c.hint}")
    for child in c.children:
        lines += _render(child, depth + 1)
    return lines


@click.command()
@click.option("--psp-state", envvar="HV_PSP_STATE", type=click.Path(dir_okay=False), default=None,
              help="The PSP's state file (default: $HV_PSP_STATE, else $XDG_DATA_HOME/hv/psp-state.json).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the tree.")
def ok(psp_state, as_json):
    """Check that the emulated platform is ready for SEV guests (sevctl ok style)."""
    from hv.vmm.hostfiles import default_psp_state, prepare_psp_state

    path = prepare_psp_state(psp_state or default_psp_state())
    root = run_checks(path)
    if as_json:
        click.echo(json.dumps(root.to_json(), indent=2))
    else:
        click.echo("\n".join(_render(root)))
    raise SystemExit(1 if root.failed() else 0)
