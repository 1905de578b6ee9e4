"""SNP_GUEST_REQUEST (es-snp-reference 4.1, 4.3): a guest's encrypted MSG_REPORT_REQ in, the
encrypted MSG_REPORT_RSP holding a VCEK-signed attestation report out.

The hypervisor carries both pages but holds no VMPCK, so it can neither read report_data nor
forge a report; what it could still do is replay an old request, and the per-VMPCK counter stops
that: a request must carry exactly counter + 1 (else AEAD_OFLOW, and no response is written),
the response carries seqno + 1, and the counter then moves by two. Every AES-GCM IV is therefore
used once per key.

What goes into the report comes from the PSP's own state, never from the request: the policy
and host_data given at launch, the SNP launch digest as measurement, the chip id, the TCB, and
what a checked ID block gave at SNP_LAUNCH_FINISH (family and image ID, guest SVN, the ID and
author key digests, AUTHOR_KEY_EN; zeros without one); the request contributes only
report_data and the VMPL it asks for.

Both pages are the hypervisor's (unassigned in the RMP) and outside the SEV-ES TMR
(INVALID_ADDRESS, before the request is read): a TMR page is hypervisor-owned in the RMP, and a
response written there would overwrite other guests' VMSA integrity values.
"""

from __future__ import annotations

from sevwire import (
    MsgReportReq,
    MsgReportRsp,
    MsgType,
    SevWireError,
    SnpGuestRequest,
    SnpMsgHeader,
    SnpReport,
    Status,
    open_guest_message,
    seal_guest_message,
    sign_snp_report,
)

from firmware._context import PspContext
from firmware._errors import CommandError
from firmware._snp import PLATFORM_SMT, SNP_ABI_MAJOR, SNP_ABI_MINOR, SNP_RUNNING, SnpGuest, _guest, _rmp
from firmware._vcek import SNP_TCB, vcek_key

__all__ = ["cmd_snp_guest_request"]

PAGE = 0x1000
SNP_BUILD = 25
KEY_SEL_ANY, KEY_SEL_VCEK = 0, 1
KEY_INFO_AUTHOR_KEY_EN = 1  # report key_info bit 0; signing_key [4:2] stays 0 (VCEK)


def cmd_snp_guest_request(ctx: PspContext, buf: SnpGuestRequest) -> None:
    guest = _guest(ctx, buf.gctx_paddr, SNP_RUNNING)
    for spa in (buf.req_paddr, buf.res_paddr):
        assigned, *_ = _rmp(ctx, spa)
        ctx.mem.outside_tmr(spa, PAGE)
        if assigned:
            raise CommandError(Status.INVALID_PAGE_STATE, "guest request pages must be hypervisor pages")
    if buf.req_paddr == buf.res_paddr:
        raise CommandError(Status.INVALID_ADDRESS, "request and response pages must differ")
    message = ctx.mem.read(buf.req_paddr, PAGE)
    try:
        hdr = SnpMsgHeader.decode(message)
        hdr.check()
    except SevWireError as exc:
        raise CommandError(Status.INVALID_PARAM, str(exc)) from None
    if len(guest.vmpck) != 4:
        raise CommandError(Status.INVALID_GUEST, "the guest has no VMPCKs")
    if hdr.msg_seqno != guest.msg_seqno[hdr.msg_vmpck] + 1:
        raise CommandError(Status.AEAD_OFLOW, f"message sequence number {hdr.msg_seqno} is not "
                                              f"{guest.msg_seqno[hdr.msg_vmpck] + 1}")
    key = guest.vmpck[hdr.msg_vmpck]
    try:
        _hdr, payload = open_guest_message(key, message)
    except SevWireError as exc:
        raise CommandError(Status.INVALID_PARAM, str(exc)) from None
    if hdr.msg_type != MsgType.MSG_REPORT_REQ:
        raise CommandError(Status.UNSUPPORTED, f"guest message type {hdr.msg_type} is not supported")
    try:
        req = MsgReportReq.decode(payload)
    except SevWireError as exc:
        raise CommandError(Status.INVALID_PARAM, str(exc)) from None
    if req.vmpl > 3 or req.vmpl < hdr.msg_vmpck:
        raise CommandError(Status.INVALID_PARAM, f"report VMPL {req.vmpl} for VMPCK{hdr.msg_vmpck}")
    if req.key_sel not in (KEY_SEL_ANY, KEY_SEL_VCEK):
        raise CommandError(Status.INVALID_KEY, "no VLEK is installed")
    report = sign_snp_report(_report(ctx, guest, req), vcek_key(ctx.identity.chip))
    response = seal_guest_message(key, hdr.msg_seqno + 1, MsgType.MSG_REPORT_RSP,
                                  MsgReportRsp(0, report).encode(), hdr.msg_vmpck)
    ctx.mem.write(buf.res_paddr, response.ljust(PAGE, b"\0"))
    guest.msg_seqno[hdr.msg_vmpck] += 2


def _report(ctx: PspContext, guest: SnpGuest, req: MsgReportReq) -> SnpReport:
    build = bytes([SNP_BUILD, SNP_ABI_MINOR, SNP_ABI_MAJOR, 0])
    return SnpReport(
        policy=guest.policy, report_data=req.report_data, measurement=guest.ld,
        chip_id=ctx.identity.chip.chip_id, current_tcb=SNP_TCB, host_data=guest.host_data,
        report_id=guest.report_id, vmpl=req.vmpl, platform_info=1 if PLATFORM_SMT else 0,
        builds=build + build, family_id=guest.family_id, image_id=guest.image_id,
        guest_svn=guest.guest_svn, id_key_digest=guest.id_key_digest,
        author_key_digest=guest.author_key_digest,
        key_info=KEY_INFO_AUTHOR_KEY_EN if guest.author_key_en else 0)
