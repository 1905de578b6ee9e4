"""The measured launch as the VMM performs it, and the guest owner's part in it.

SEV and SEV-ES (QEMU's sev-guest, KVM_SEV_LAUNCH_*): LAUNCH_START with the owner's session,
LAUNCH_UPDATE_DATA of the boot page tables and the image (and LAUNCH_UPDATE_VMSA under SEV-ES),
LAUNCH_MEASURE, the owner's answer (a LAUNCH_SECRET packet, or a refusal), LAUNCH_FINISH. The owner
is a command (--owner-exec), files of a session made offline (--session), or hv itself playing the
owner with a fresh key behind a channel (hv.owner.LocalOwner) that keeps TEK and TIK out of the
VMM's objects.

SEV-SNP (hv.vmm.snp_launch) has no LAUNCH_SECRET: the guest asks for its secret after attestation
(port 0x502, hv.vmm.secret_release), and OwnerChannel answers each report: the --owner-exec
command, or hv as the owner, against this platform's certificates and the launch digest hv.boot
predicts from the configured image.
"""

from __future__ import annotations

import time
from pathlib import Path

from hv import boot
from hv.kvm import Mode
from hv.kvm.sev import FirmwareError, SevDevice, SevGuest
from hv.vmm.config import LaunchError, VmmConfig, check_secret
from hv.vmm.owner_exec import OwnerExecError, run_owner
from hv.vmm.snp_launch import snp_launch

__all__ = ["DEFAULT_POLICY", "OwnerChannel", "read_session", "sev_launch", "snp_launch_with_release"]

DEFAULT_POLICY = 0x1  # NODBG: the guest owner must opt in to debugging


class OwnerChannel:
    """The VMM's line to the guest owner: the --owner-exec command within what is left of
    --timeout, or hv as the SEV-SNP owner releasing the configured secret."""

    def __init__(self, config: VmmConfig):
        self._config = config
        self.clock = time.monotonic()  # what --owner-exec's share of --timeout counts from
        self.release_certs: dict[str, bytes] | None = None
        self._release_expected: bytes | None = None

    def restart_clock(self) -> None:
        self.clock = time.monotonic()

    def exec(self, request: dict, fields: tuple[str, ...]) -> dict:
        """The --owner-exec command's answer (hv.vmm.owner_exec), in what is left of --timeout:
        counted from the start of the launch under SEV and SEV-ES (the answer is part of it) and
        of the run under SEV-SNP (the guest asks while it runs: the watchdog's clock)."""
        cfg = self._config
        left = None if cfg.timeout is None else cfg.timeout - (time.monotonic() - self.clock)
        try:
            return run_owner(cfg.owner_exec, request, fields, left)
        except OwnerExecError as e:
            raise LaunchError(str(e)) from None

    def release(self, report: bytes, vm, guest) -> dict:
        """The guest owner's answer to one attestation report: the --owner-exec command's, or
        hv's own as the owner, checking against this platform's certificates, the launch digest
        hv.boot predicts from the configured image (not whatever was launched) and the policy."""
        from hv.owner import RELEASE_ANSWER_FIELDS, release_secret

        cfg = self._config
        if cfg.owner_exec is not None:
            return self.exec({"report": report.hex()}, RELEASE_ANSWER_FIELDS)
        if self.release_certs is None or guest is None:
            raise LaunchError("the guest is not launched yet")
        if self._release_expected is None:
            self._release_expected = boot.snp_launch_digest(cfg.image, cfg.mem_size, vm.cbitpos)
        return release_secret(report, self.release_certs, self._release_expected, cfg.secret,
                              expected_policy=guest.policy)


def snp_launch_with_release(vmm, dev: SevDevice, snp_pages, owner: OwnerChannel) -> int:
    """The SEV-SNP launch (hv.vmm.snp_launch) and the record of the secret release it offers;
    returns the boot information page's flags."""
    cfg = vmm.config
    try:
        vmm.sev = snp_launch(vmm, dev, snp_pages)
        if vmm.secret_release is not None and cfg.owner_exec is None:
            # hv plays the owner: it checks reports against this platform's chain.
            owner.release_certs = dev.export_certificates()
    except FirmwareError as e:
        raise LaunchError(str(e)) from e
    offered = vmm.secret_release is not None
    vmm.launch_info["secret_release"] = {"offered": offered, "released": False,
                                         "requests": 0, "outcomes": []}
    if not offered:
        return 0
    vmm.launch_info["secret_release"]["owner"] = "exec" if cfg.owner_exec else "in-process"
    return boot.BOOT_INFO_SECRET_RELEASE


def sev_launch(vmm, owner_channel: OwnerChannel,
               plan: tuple[list[tuple[int, bytes]], bytes, list[bytes]] | None = None) -> int:
    """The SEV or SEV-ES launch of `vmm`'s guest; returns the injected secret's length. `plan`
    is what to launch when it is not the configured image (a kernel's boot plan, hv.vmm.linux):
    (regions in order, the digest they give, the initial VMSA pages LAUNCH_UPDATE_VMSA measures
    after them under SEV-ES, [] under SEV). The digest must cover those VMSA pages too."""
    from hv.owner import LocalOwner  # the guest owner's side, played locally when asked to
    from sevwire import Policy

    cfg, vm = vmm.config, vmm.vm
    policy = DEFAULT_POLICY if cfg.policy is None else cfg.policy
    es = vm.type is Mode.SEV_ES
    if es:
        policy |= Policy.ES  # the VM type decides: an ES guest runs under an ES policy
    dev = SevDevice(vmm.kvm)
    try:
        dev.ensure_init(es=True)
        status = dev.platform_status()
        vmm.sev = sev = SevGuest(vm, dev, policy)
        vm.sev = sev
        owner = None
        if plan is None:
            regions = boot.launch_regions(cfg.image, cfg.mem_size, vm.cbitpos)
            digest = boot.launch_digest(cfg.image, cfg.mem_size, vm.cbitpos, es=es)
            vmsas = boot.launch_vmsas(cfg.image, cfg.mem_size) if es else []
        else:
            regions, digest, vmsas = plan
        if cfg.session_dir is not None:
            godh, session = read_session(cfg.session_dir)
        else:
            # The convenient local mode: hv plays the guest owner with a fresh owner key, behind
            # a channel that keeps TEK and TIK out of the VMM's objects (hv.owner.LocalOwner).
            pdh, _chain = dev.pdh_cert_export()
            owner = LocalOwner(cfg.secret or b"", digest)
            godh, session = owner.start(pdh, policy)
        sev.launch_start(godh, session)
        for gpa, data in regions:
            vm.write_gpa(gpa, data)
            sev.launch_update_data(gpa, len(data))
        for vmsa in vmsas:
            sev.launch_update_vmsa(vmm.vcpu, vmsa)
        measurement, mnonce = sev.launch_measure()
        request = {"measurement": measurement.hex(), "mnonce": mnonce.hex(),
                   "api_major": status.api_major, "api_minor": status.api_minor,
                   "build": status.build, "policy": policy}
        vmm.launch_info = dict(request, handle=sev.handle, asid=vm.asid,
                               digest=digest.hex(),
                               mode=vm.type)
        secret_len = 0
        answer = None
        if cfg.owner_exec is not None:
            answer = owner_channel.exec(request, ("header", "data"))
        elif cfg.secret is not None:
            if owner is None:
                raise LaunchError("--secret-file with --session needs --owner-exec: only the owner holds the transport keys")
            check_secret(cfg.secret)
            answer = owner.answer(request)
        if answer is not None:
            if "refuse" in answer:
                raise LaunchError(f"the guest owner refused the launch: {answer['refuse']}")
            header, data = bytes.fromhex(answer["header"]), bytes.fromhex(answer["data"])
            if plan is None:
                sev.launch_secret(header, data, boot.SECRET_GPA)
                secret_len = len(data)
            else:
                # A kernel's boot protocol has no secret area (hv's secret page is where
                # boot_params are): the owner's approval counts, its secret is not injected.
                vmm.launch_info["secret_not_injected"] = "a kernel launch has no secret area"
        sev.launch_finish()
        vmm.launch_info["secret_injected"] = secret_len > 0
        return secret_len
    except FirmwareError as e:
        raise LaunchError(str(e)) from e
    except (KeyError, ValueError) as e:
        raise LaunchError(f"bad answer from the guest owner: {e}") from e


def read_session(directory: str) -> tuple[bytes, bytes]:
    """The owner's session made offline: godh.cert and launch_blob.bin (hv owner session)."""
    d = Path(directory)
    try:
        godh = (d / "godh.cert").read_bytes()
        blob = (d / "launch_blob.bin").read_bytes()
    except OSError as e:
        raise LaunchError(f"session directory {directory}: {e.strerror}: {e.filename}") from e
    if len(godh) != 2084 or len(blob) != 128:
        raise LaunchError(f"session directory {directory}: godh.cert must be 2084 bytes and "
                          f"launch_blob.bin 128 bytes (got {len(godh)} and {len(blob)})")
    return godh, blob
