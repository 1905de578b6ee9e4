"""The PSP firmware's entry point: one mailbox command in, one SEV_RET_* status out.

``Firmware.command(cmd_id, buf_spa)`` behaves like the real mailbox: the driver has written a
command buffer at ``buf_spa`` and rung the doorbell; the firmware reads the buffer through the
platform port, runs the command and writes in/out fields back to the same address.

This is the one dispatcher and the one place errors become status codes:
- an id without a handler is INVALID_COMMAND (the buffer is not even read);
- a buffer that cannot be read is INVALID_ADDRESS, and so is one in the SEV-ES TMR (the buffer
  is read from and written back to the address the hypervisor names: firmware/_memory.py);
- a ``CommandError`` (or a sevwire error, which carries its own status) becomes its status,
  after writing back the buffer it carries (INVALID_LEN answers with the needed lengths);
- a command that changes the platform identity but cannot re-read or save the state file
  (``NvStoreError``) changes nothing and answers the error's status (SECURE_DATA_INVALID,
  HWERROR_PLATFORM); the reason is kept in ``nv_fault`` for the platform owner's tools;
- anything else is a firmware bug: HWERROR_PLATFORM, logged, never raised to the hypervisor.
Whatever the hypervisor writes, ``command`` returns an int.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from sevwire import (
    Activate,
    Attestation,
    Cmd,
    DbgDecrypt,
    DbgEncrypt,
    Deactivate,
    Decommission,
    GetId,
    GuestStatus,
    Init,
    LaunchFinish,
    LaunchMeasure,
    LaunchSecret,
    LaunchStart,
    LaunchUpdateData,
    LaunchUpdateVmsa,
    PdhCertExport,
    PekCertImport,
    PekCsr,
    PlatformState,
    PlatformStatus,
    ReceiveFinish,
    ReceiveStart,
    ReceiveUpdateData,
    ReceiveUpdateVmsa,
    SendCancel,
    SendFinish,
    SendStart,
    SendUpdateData,
    SendUpdateVmsa,
    SevWireError,
    SnpActivate,
    SnpDbgDecrypt,
    SnpDbgEncrypt,
    SnpDecommission,
    SnpGctxCreate,
    SnpGuestRequest,
    SnpLaunchFinish,
    SnpLaunchStart,
    SnpLaunchUpdate,
    SnpPageReclaim,
    Status,
)

from firmware import _debug, _guest_cmds, _launch, _migrate, _platform_cmds, _snp, _snp_attest, _snp_debug
from firmware._context import API_MAJOR, API_MINOR, BUILD, PspContext
from firmware._errors import CommandError, NvStoreError, NvWriteError
from firmware._identity import ChipIdentity, PlatformIdentity
from firmware._kds import kds_chain_der
from firmware._memory import U64_MAX, Memory
from firmware._nvstore import NvStore
from firmware._vcek import vcek_cert_der
from firmware.ports import PlatformPort

__all__ = ["Firmware", "HANDLERS", "new_chip_identity"]

log = logging.getLogger("firmware")

Handler = Callable[[PspContext, Any], Any]

HANDLERS: dict[Cmd, tuple[type | None, Handler]] = {
    Cmd.INIT: (Init, _platform_cmds.cmd_init),
    Cmd.SHUTDOWN: (None, _platform_cmds.cmd_shutdown),
    Cmd.PLATFORM_RESET: (None, _platform_cmds.cmd_platform_reset),
    Cmd.PLATFORM_STATUS: (PlatformStatus, _platform_cmds.cmd_platform_status),
    Cmd.PEK_GEN: (None, _platform_cmds.cmd_pek_gen),
    Cmd.PEK_CSR: (PekCsr, _platform_cmds.cmd_pek_csr),
    Cmd.PEK_CERT_IMPORT: (PekCertImport, _platform_cmds.cmd_pek_cert_import),
    Cmd.PDH_CERT_EXPORT: (PdhCertExport, _platform_cmds.cmd_pdh_cert_export),
    Cmd.PDH_GEN: (None, _platform_cmds.cmd_pdh_gen),
    Cmd.DF_FLUSH: (None, _platform_cmds.cmd_df_flush),
    Cmd.GET_ID: (GetId, _platform_cmds.cmd_get_id),
    Cmd.NOP: (None, _platform_cmds.cmd_nop),
    Cmd.DECOMMISSION: (Decommission, _guest_cmds.cmd_decommission),
    Cmd.ACTIVATE: (Activate, _guest_cmds.cmd_activate),
    Cmd.DEACTIVATE: (Deactivate, _guest_cmds.cmd_deactivate),
    Cmd.GUEST_STATUS: (GuestStatus, _guest_cmds.cmd_guest_status),
    Cmd.LAUNCH_START: (LaunchStart, _launch.cmd_launch_start),
    Cmd.LAUNCH_UPDATE_DATA: (LaunchUpdateData, _launch.cmd_launch_update_data),
    Cmd.LAUNCH_UPDATE_VMSA: (LaunchUpdateVmsa, _launch.cmd_launch_update_vmsa),
    Cmd.LAUNCH_MEASURE: (LaunchMeasure, _launch.cmd_launch_measure),
    Cmd.LAUNCH_SECRET: (LaunchSecret, _launch.cmd_launch_secret),
    Cmd.LAUNCH_FINISH: (LaunchFinish, _launch.cmd_launch_finish),
    Cmd.ATTESTATION: (Attestation, _launch.cmd_attestation),
    Cmd.SEND_START: (SendStart, _migrate.cmd_send_start),
    Cmd.SEND_UPDATE_DATA: (SendUpdateData, _migrate.cmd_send_update_data),
    Cmd.SEND_UPDATE_VMSA: (SendUpdateVmsa, _migrate.cmd_send_update_vmsa),
    Cmd.SEND_FINISH: (SendFinish, _migrate.cmd_send_finish),
    Cmd.SEND_CANCEL: (SendCancel, _migrate.cmd_send_cancel),
    Cmd.RECEIVE_START: (ReceiveStart, _migrate.cmd_receive_start),
    Cmd.RECEIVE_UPDATE_DATA: (ReceiveUpdateData, _migrate.cmd_receive_update_data),
    Cmd.RECEIVE_UPDATE_VMSA: (ReceiveUpdateVmsa, _migrate.cmd_receive_update_vmsa),
    Cmd.RECEIVE_FINISH: (ReceiveFinish, _migrate.cmd_receive_finish),
    Cmd.DBG_DECRYPT: (DbgDecrypt, _debug.cmd_dbg_decrypt),
    Cmd.DBG_ENCRYPT: (DbgEncrypt, _debug.cmd_dbg_encrypt),
    Cmd.SNP_INIT: (None, _snp.cmd_snp_init),
    Cmd.SNP_GCTX_CREATE: (SnpGctxCreate, _snp.cmd_snp_gctx_create),
    Cmd.SNP_LAUNCH_START: (SnpLaunchStart, _snp.cmd_snp_launch_start),
    Cmd.SNP_ACTIVATE: (SnpActivate, _snp.cmd_snp_activate),
    Cmd.SNP_LAUNCH_UPDATE: (SnpLaunchUpdate, _snp.cmd_snp_launch_update),
    Cmd.SNP_LAUNCH_FINISH: (SnpLaunchFinish, _snp.cmd_snp_launch_finish),
    Cmd.SNP_DECOMMISSION: (SnpDecommission, _snp.cmd_snp_decommission),
    Cmd.SNP_GUEST_REQUEST: (SnpGuestRequest, _snp_attest.cmd_snp_guest_request),
    Cmd.SNP_DBG_DECRYPT: (SnpDbgDecrypt, _snp_debug.cmd_snp_dbg_decrypt),
    Cmd.SNP_DBG_ENCRYPT: (SnpDbgEncrypt, _snp_debug.cmd_snp_dbg_encrypt),
    Cmd.SNP_PAGE_RECLAIM: (SnpPageReclaim, _snp.cmd_snp_page_reclaim),
}
"""Command id -> (buffer layout or None, handler).  Ids not listed (INIT_EX, DOWNLOAD_FIRMWARE,
RING_BUFFER, COPY, ACTIVATE_EX, SWAP_*, and the SNP commands other than the
launch set, SNP_GUEST_REQUEST, SNP_DBG_DECRYPT/ENCRYPT and SNP_PAGE_RECLAIM above: SNP_SHUTDOWN,
SNP_PLATFORM_STATUS, SNP_DF_FLUSH, SNP_INIT_EX, SNP_GUEST_STATUS, SNP_ACTIVATE_EX, the
SNP_PAGE_* swap/move/set-state commands, SNP_CONFIG, SNP_COMMIT, ...) are INVALID_COMMAND here."""


def _cmd_name(cmd_id: int) -> str:
    try:
        return Cmd(cmd_id).name
    except (ValueError, TypeError):
        return f"command {cmd_id!r}"


def new_chip_identity() -> ChipIdentity:
    """Manufacture an emulated chip (ARK, ASK, CEK, chip id).  Slow (two RSA-4096 keys): make
    one and pass it to every ``Firmware`` that has no state file yet, e.g. once per test run."""
    return ChipIdentity.generate(API_MAJOR, API_MINOR)


class Firmware:
    """The emulated AMD Secure Processor running the SEV firmware API.

    ``nv_path`` is the PSP's non-volatile storage (the platform identity); an existing file is
    loaded (``NvStoreError`` if it is corrupt), a missing one is created with a fresh identity,
    and ``None`` keeps the identity in memory only.  ``chip`` supplies the fused chip identity
    when a new state is created (default: generate one, which takes seconds)."""

    def __init__(self, port: PlatformPort, nv_path: str | os.PathLike[str] | None, *,
                 chip: ChipIdentity | None = None) -> None:
        max_asid, min_sev = int(port.max_asid), int(port.min_sev_asid)
        if max_asid < 1 or not 1 <= min_sev <= max_asid + 1:
            raise ValueError(f"bad ASID ranges: max_asid={max_asid}, min_sev_asid={min_sev}")
        store = NvStore(nv_path)
        api = (API_MAJOR, API_MINOR)
        with store.locked():  # two machines booting on a new file make one identity, not two
            record = store.load_record()
            if record is None:
                identity = PlatformIdentity.fresh(chip if chip is not None else new_chip_identity(), api)
                store.save(identity)
        if record is not None:
            identity = PlatformIdentity.from_record(record, api)
        self._ctx = PspContext(port=port, mem=Memory(port), identity=identity, nvstore=store)
        self._busy = threading.Lock()  # the PSP runs one mailbox command at a time
        self._nv_fault: str | None = None

    # -- key-free facts for diagnostics ----------------------------------------------------------

    @property
    def api_major(self) -> int:
        return API_MAJOR

    @property
    def api_minor(self) -> int:
        return API_MINOR

    @property
    def build(self) -> int:
        return BUILD

    @property
    def platform_state(self) -> PlatformState:
        return self._ctx.state

    @property
    def guest_count(self) -> int:
        return len(self._ctx.guests)

    def export_amd_chain(self) -> tuple[bytes, bytes]:
        """(ASK, ARK) AMD certificates: public, what sevctl would fetch from AMD's key server."""
        return self._ctx.identity.amd_chain()

    def export_vcek(self) -> bytes:
        """The ASK-signed X.509 VCEK (DER) for the current TCB: what AMD's key server serves."""
        return vcek_cert_der(self._ctx.identity.chip)

    def export_kds_chain(self) -> tuple[bytes, bytes]:
        """(ASK, ARK) as X.509 DER, the KDS's cert_chain: the keys of export_amd_chain()."""
        return kds_chain_der(self._ctx.identity.chip)

    @property
    def nv_fault(self) -> str | None:
        """Why the last command failed on the state file (it could not be read, locked or
        written), or None.  The mailbox only says HWERROR_PLATFORM or SECURE_DATA_INVALID; this
        is the firmware's own log line for the platform owner: a path and an OS error, no key."""
        return self._nv_fault

    # -- the mailbox -----------------------------------------------------------------------------

    def command(self, cmd_id: int, buf_spa: int) -> int:
        """Run one mailbox command; returns the SEV_RET_* status.  Never raises."""
        try:
            with self._busy:
                self._nv_fault = None
                try:
                    return int(self._run(cmd_id, buf_spa))
                except NvStoreError as err:  # the change was not made: see PspContext.change_identity
                    self._nv_fault = f"{_cmd_name(cmd_id)} did not take effect: {err}"
                    if isinstance(err, NvWriteError):
                        self._nv_fault += "; the old state is intact"
                    return int(err.status)
        except Exception:  # the last line of defence: a firmware bug must not crash the machine
            log.exception("PSP firmware internal error in command %r", cmd_id)
            return int(Status.HWERROR_PLATFORM)

    def _run(self, cmd_id: int, buf_spa: int) -> Status:
        try:
            cmd = Cmd(cmd_id)
        except (ValueError, TypeError):
            return Status.INVALID_COMMAND
        entry = HANDLERS.get(cmd)
        if entry is None:
            return Status.INVALID_COMMAND
        layout, handler = entry
        ctx = self._ctx
        try:
            buf = None
            if layout is not None:
                if not isinstance(buf_spa, int) or not 0 <= buf_spa <= U64_MAX:
                    return Status.INVALID_ADDRESS
                buf = layout.unpack(ctx.mem.read(buf_spa, layout.SIZE))
            out = handler(ctx, buf)
            if out is not None:
                ctx.mem.write(buf_spa, out.pack())
            return Status.SUCCESS
        except CommandError as err:
            if err.writeback is not None:
                try:
                    ctx.mem.write(buf_spa, err.writeback)
                except CommandError as write_err:
                    return write_err.status
            return err.status
        except SevWireError as err:
            return Status(err.status)
