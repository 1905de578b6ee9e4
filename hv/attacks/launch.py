"""A measured launch the hypervisor runs itself, so it can cheat in the parts it controls.

hv.vmm's launch is honest. The launch attacks (A13, A15) need the same PSP command sequence with
the hypervisor's freedom kept in: where each piece of the image lands and in which order
LAUNCH_UPDATE_DATA sees it, what it writes outside the measured flow, the entry registers. The
guest owner is played honestly and separately (Lab.guest_owner, an hv.owner.LocalOwner): it makes
the session and keeps TEK/TIK to itself, knows the genuine image, and packs the secret for
LAUNCH_SECRET only when the measurement proves that image. The hypervisor talks to it through the
channel's two messages and never holds its keys.

Under SEV-SNP the hypervisor's freedom is smaller: SNP_LAUNCH_UPDATE measures each 4 KiB page
as it lies in memory, with its GPA and page type, so all it can choose is which pages (and which
contents) it hands the PSP: `snp_launch_with` runs hv.vmm's launch over a list of pages the attack
rewrote. The owner (hv.vmm's, honest) then checks the guest's attestation report against the
genuine image before it releases the secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from hv import boot
from hv.attacks.lab import Lab
from hv.hw.addr import GPA
from hv.kvm import Mode
from hv.kvm.sev import SevDevice, SevGuest

__all__ = ["LaunchReport", "Placer", "SnpPages", "honest_placer", "measured_launch", "snp_launch_with"]

Placer = Callable[[Lab, SevGuest, list[tuple[int, bytes]]], None]
SnpPages = list[tuple[int, bytes, int]]  # (GPA, 4 KiB contents, SNP page type), launch order


def honest_placer(lab: Lab, sev: SevGuest, regions: list[tuple[int, bytes]]) -> None:
    for gpa, data in regions:
        lab.vm.write_gpa(GPA(gpa), data)
        sev.launch_update_data(gpa, len(data))


@dataclass(frozen=True)
class LaunchReport:
    measurement: bytes
    secret_injected: bool
    owner_said: str


def measured_launch(lab: Lab, place: Placer = honest_placer, policy: int = 0x1) -> LaunchReport:
    """LAUNCH_START .. LAUNCH_FINISH with `place` loading the measured regions, then the boot
    information page and the entry registers, as hv.vmm does."""
    if lab.mode not in (Mode.SEV, Mode.SEV_ES):
        raise ValueError(f"the lab's own launch drives SEV and SEV-ES, not {lab.mode}")
    es = lab.mode == Mode.SEV_ES
    if es:
        policy |= 0x4  # ES: the PSP refuses an ES guest under a policy without it
    cfg, vm = lab.config, lab.vm
    dev = SevDevice(lab.vmm.kvm)
    dev.ensure_init(es=True)
    status = dev.platform_status()
    sev = SevGuest(vm, dev, policy)
    vm.sev = sev
    lab.own_sev = sev
    pdh, _chain = dev.pdh_cert_export()
    owner = lab.guest_owner()                                  # the owner's side, apart
    sev.launch_start(*owner.start(pdh, policy))
    place(lab, sev, boot.launch_regions(cfg.image, cfg.mem_size, vm.cbitpos))
    if es:  # the initial register state is measured and encrypted too: nothing to redirect later
        for vmsa in boot.launch_vmsas(cfg.image, cfg.mem_size):
            sev.launch_update_vmsa(lab.vcpu, vmsa)
    measurement, mnonce = sev.launch_measure()
    request = {"measurement": measurement.hex(), "mnonce": mnonce.hex(), "api_major": status.api_major,
               "api_minor": status.api_minor, "build": status.build, "policy": policy}
    answer = owner.answer(request)
    injected = "refuse" not in answer
    secret_len = 0
    if injected:
        data = bytes.fromhex(answer["data"])
        sev.launch_secret(bytes.fromhex(answer["header"]), data, boot.SECRET_GPA)
        secret_len = len(data)
    sev.launch_finish()
    vm.write_gpa(GPA(boot.BOOT_INFO_GPA), boot.boot_info(cfg.mem_size, secret_len))
    if lab.vcpu.guest_state_protected:
        return LaunchReport(measurement, injected,
                            "injected the secret" if injected else f"refused: {answer['refuse']}")
    lab.vcpu.set_regs({"rip": lab.vmm.loaded.entry, "rsp": boot.BOOT_STACK_TOP,
                       "rsi": boot.BOOT_INFO_GPA, "rflags": 0x2})
    lab.vcpu.set_sregs({"cr3": boot.PAGE_TABLES_GPA})
    return LaunchReport(measurement, injected,
                        "injected the secret" if injected else f"refused: {answer['refuse']}")


def snp_launch_with(lab: Lab, rewrite: Callable[[SnpPages], SnpPages]) -> None:
    """hv.vmm's SNP launch of `lab`'s guest, with the pages SNP_LAUNCH_UPDATE sees replaced by
    `rewrite(pages)` (the genuine pages in launch order, the VMSA last)."""
    if lab.mode != Mode.SEV_SNP:
        raise ValueError(f"the lab's SNP launch drives SEV-SNP, not {lab.mode}")
    lab.vmm.load(snp_pages=rewrite)

