"""sevwire: the SEV wire formats and formulas shared by the guest owner and the PSP firmware.

Pure: no state, no stored keys, no imports from `hv` or `firmware`. Keys are passed in by the
caller as `cryptography` key objects or bytes. Everything here follows sev-reference sections
5-8 byte for byte (little-endian, packed); every error is a SevWireError subclass carrying the
SEV_RET_* status the firmware should answer with (`err.status`).

Contents:
  status codes, command ids, states, policy   Status, Cmd, PlatformState, GuestState, Policy
  command buffers (struct, pack/unpack)        LaunchStart, LaunchUpdateData, LaunchSecret, ...
  SEV certificate (2084 B) and AMD certificate SevCert, AmdCert, sign_*/verify_*
  session (KDF, blob, ECDH)                    build_session (owner), open_session (PSP)
  launch digest and measurement                LaunchDigest, launch_measure
  LAUNCH_SECRET packets                        package_secret (owner), open_secret (PSP)
  migration buffers and packets                SendStart, ReceiveStart, ..., seal/open_packet
  legacy ATTESTATION report                    AttestationReport, sign/verify
  SNP guest messages, 1184-byte SNP report     seal/open_guest_message, SnpReport, sign/verify
  SNP CPUID page (launch page type 6)          SnpCpuidEntry, encode/decode_snp_cpuid_page
  VMSA (SEV-ES save area) layout               VMSA_QWORDS, VMSA_SEGMENTS, vmsa_integrity
"""

from sevwire._amdcert import (
    AMD_CERT_HEADER_SIZE,
    AMD_CERT_VERSION,
    AmdCert,
    amd_pss_hash,
    sign_amd_cert,
    split_amd_chain,
    verify_amd_cert,
)
from sevwire._attestation import (
    ATTESTATION_REPORT_SIZE,
    ATTESTATION_SIGNED_LEN,
    AttestationReport,
    sign_attestation_report,
    verify_attestation_report,
)
from sevwire._buffers import (
    BUFFER_FOR_CMD,
    Activate,
    Attestation,
    CommandBuffer,
    DbgDecrypt,
    DbgEncrypt,
    Deactivate,
    Decommission,
    DownloadFirmware,
    GetId,
    GuestStatus,
    Init,
    InitEx,
    LaunchFinish,
    LaunchMeasure,
    LaunchSecret,
    LaunchStart,
    LaunchUpdateData,
    LaunchUpdateVmsa,
    MeasureResult,
    PdhCertExport,
    PekCertImport,
    PekCsr,
    PlatformStatus,
)
from sevwire._commands import Cmd, GuestState, InitFlags, PlatformState
from sevwire._errors import (
    BufferLengthError,
    CertificateError,
    DigestFinalizedError,
    FieldRangeError,
    FormatError,
    MacError,
    MeasurementMismatch,
    PolicyError,
    PolicyMacError,
    SecretMacError,
    SevWireError,
    SignatureError,
    WrapMacError,
)
from sevwire._kdf import derive_kek, derive_kik, derive_master, kdf_counter_hmac_sha256
from sevwire._measure import (
    MEASURE_API_MIN,
    LaunchDigest,
    api_at_least,
    launch_measure,
    measurement_message,
    verify_launch_measure,
)
from sevwire._migrate import (
    PACKET_HEADER_SIZE,
    TRANSPORT_CONTEXT,
    PacketFlags,
    PacketHeader,
    PacketMacError,
    ReceiveFinish,
    ReceiveStart,
    ReceiveUpdateData,
    ReceiveUpdateVmsa,
    SendCancel,
    SendFinish,
    SendStart,
    SendUpdateData,
    SendUpdateVmsa,
    open_packet,
    packet_mac,
    seal_packet,
)
from sevwire._policy import POLICY_RESERVED_MASK, Policy, parse_policy, policy_api_major, policy_api_minor
from sevwire._secret import (
    SECRET_HEADER_SIZE,
    SecretFlags,
    SecretHeader,
    open_secret,
    package_secret,
    secret_mac,
)
from sevwire._session import (
    SESSION_BLOB_SIZE,
    OwnerSession,
    SessionBlob,
    TransportKeys,
    aes128_ctr,
    build_session,
    ecdh_shared_secret,
    open_session,
    policy_mac,
    seal_session,
    unseal_session,
)
from sevwire._sevcert import (
    SEV_CERT_SIGNED_LEN,
    SEV_CERT_SIZE,
    SEV_CERT_VERSION,
    Algo,
    Curve,
    SevCert,
    SigSlot,
    Usage,
    join_cert_chain,
    sign_sev_cert,
    split_cert_chain,
    verify_sev_cert,
)
from sevwire._snp import (
    INITIAL_VMSA_GPA,
    SNP_POLICY_DEFAULT,
    SNP_POLICY_KNOWN,
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
    SnpPageType,
    SnpPolicy,
    VMPL_PERMS_VALID,
    snp_extend,
    snp_page_info,
)
from sevwire._snp_cpuid import (
    SNP_CPUID_COUNT_MAX,
    SNP_CPUID_PAGE_SIZE,
    SnpCpuidEntry,
    decode_snp_cpuid_page,
    encode_snp_cpuid_page,
    snp_cpuid_changes,
)
from sevwire._snp_certs import (
    SNP_CERT_ARK_GUID,
    SNP_CERT_ASK_GUID,
    SNP_CERT_VCEK_GUID,
    SNP_CERT_VLEK_GUID,
    parse_snp_cert_table,
    snp_cert_table,
)
from sevwire._snp_id import (
    ID_AUTH_SIZE,
    ID_BLOCK_SIZE,
    ID_BLOCK_VERSION,
    ID_KEY_ALGO_ECDSA_P384_SHA384,
    ID_KEY_CURVE_P384,
    ID_KEY_SIZE,
    ID_SIG_SIZE,
    SnpIdAuth,
    SnpIdBlock,
    make_snp_id_auth,
    snp_id_key,
    snp_id_key_digest,
    snp_id_sign,
    snp_id_verify,
    snp_public_key,
)
from sevwire._snp_guest import (
    MSG_HDR_SIZE,
    MSG_REPORT_REQ_SIZE,
    MSG_REPORT_RSP_SIZE,
    GuestMessageError,
    MsgReportReq,
    MsgReportRsp,
    MsgType,
    SnpMsgHeader,
    open_guest_message,
    seal_guest_message,
)
from sevwire._snp_report import (
    SNP_REPORT_SIGNED_LEN,
    SNP_REPORT_SIZE,
    SNP_REPORT_VERSION,
    SnpReport,
    sign_snp_report,
    tcb_parts,
    tcb_version,
    verify_snp_report,
)
from sevwire._status import Status, status_hint, status_name
from sevwire._vmsa import (
    EFER_SVME,
    VMSA_CPL,
    VMSA_INTEGRITY_END,
    VMSA_QWORDS,
    VMSA_SEGMENTS,
    VMSA_SIZE,
    VMSA_TMR_RESERVED,
    VMSA_TMR_SLOT,
    vmsa_integrity,
)

__all__ = [
    # status, commands, states, policy
    "Status", "status_hint", "status_name",
    "Cmd", "PlatformState", "GuestState", "InitFlags",
    "Policy", "parse_policy", "policy_api_major", "policy_api_minor", "POLICY_RESERVED_MASK",
    # errors
    "SevWireError", "BufferLengthError", "FieldRangeError", "FormatError", "CertificateError",
    "SignatureError", "PolicyError", "MacError", "WrapMacError", "PolicyMacError", "SecretMacError",
    "MeasurementMismatch", "DigestFinalizedError",
    # command buffers
    "CommandBuffer", "BUFFER_FOR_CMD", "Init", "InitEx", "PlatformStatus", "PekCsr", "PekCertImport",
    "PdhCertExport", "GetId", "DownloadFirmware", "LaunchStart", "LaunchUpdateData", "LaunchUpdateVmsa",
    "LaunchMeasure", "LaunchSecret", "LaunchFinish", "Decommission", "Deactivate", "Activate",
    "GuestStatus", "DbgDecrypt", "DbgEncrypt", "Attestation", "MeasureResult",
    # SEV-SNP
    "INITIAL_VMSA_GPA", "SNP_POLICY_DEFAULT", "SNP_POLICY_KNOWN", "SnpActivate", "SnpDecommission",
    "SnpGctxCreate", "SnpLaunchFinish", "SnpLaunchStart", "SnpLaunchUpdate", "SnpPageType",
    "SnpPolicy", "VMPL_PERMS_VALID", "snp_extend", "snp_page_info", "SnpGuestRequest", "SnpDbgDecrypt", "SnpDbgEncrypt",
    "SnpPageReclaim",
    # The SNP CPUID page (SNP_LAUNCH_UPDATE page type 6)
    "SNP_CPUID_COUNT_MAX", "SNP_CPUID_PAGE_SIZE", "SnpCpuidEntry", "decode_snp_cpuid_page",
    "encode_snp_cpuid_page", "snp_cpuid_changes",
    # The extended guest request's certificate table (GHCB NAE 0x80000012)
    "SNP_CERT_ARK_GUID", "SNP_CERT_ASK_GUID", "SNP_CERT_VCEK_GUID", "SNP_CERT_VLEK_GUID",
    "parse_snp_cert_table", "snp_cert_table",
    # SNP ID block and ID authentication structure (SNP_LAUNCH_FINISH)
    "ID_AUTH_SIZE", "ID_BLOCK_SIZE", "ID_BLOCK_VERSION", "ID_KEY_ALGO_ECDSA_P384_SHA384",
    "ID_KEY_CURVE_P384", "ID_KEY_SIZE", "ID_SIG_SIZE", "SnpIdAuth", "SnpIdBlock",
    "make_snp_id_auth", "snp_id_key", "snp_id_key_digest", "snp_id_sign", "snp_id_verify",
    "snp_public_key",
    # SNP guest messages and the attestation report
    "MSG_HDR_SIZE", "MSG_REPORT_REQ_SIZE", "MSG_REPORT_RSP_SIZE", "MsgType", "SnpMsgHeader",
    "MsgReportReq", "MsgReportRsp", "GuestMessageError", "seal_guest_message",
    "open_guest_message", "SNP_REPORT_SIZE", "SNP_REPORT_SIGNED_LEN", "SNP_REPORT_VERSION",
    "SnpReport", "sign_snp_report", "verify_snp_report", "tcb_version", "tcb_parts",
    # certificates
    "SEV_CERT_SIZE", "SEV_CERT_SIGNED_LEN", "SEV_CERT_VERSION", "Usage", "Algo", "Curve", "SigSlot",
    "SevCert", "sign_sev_cert", "verify_sev_cert", "split_cert_chain", "join_cert_chain",
    "AMD_CERT_HEADER_SIZE", "AMD_CERT_VERSION", "AmdCert", "amd_pss_hash", "sign_amd_cert",
    "verify_amd_cert", "split_amd_chain",
    # session
    "kdf_counter_hmac_sha256", "derive_master", "derive_kek", "derive_kik",
    "SESSION_BLOB_SIZE", "SessionBlob", "TransportKeys", "OwnerSession", "aes128_ctr", "policy_mac",
    "seal_session", "unseal_session", "ecdh_shared_secret", "build_session", "open_session",
    # measurement
    "MEASURE_API_MIN", "api_at_least", "measurement_message", "launch_measure",
    "verify_launch_measure", "LaunchDigest",
    # LAUNCH_SECRET
    "SECRET_HEADER_SIZE", "SecretFlags", "SecretHeader", "secret_mac", "package_secret", "open_secret",
    # migration (SEND_* / RECEIVE_*)
    "PACKET_HEADER_SIZE", "TRANSPORT_CONTEXT", "PacketFlags", "PacketHeader", "PacketMacError",
    "packet_mac", "seal_packet", "open_packet", "SendStart", "SendUpdateData", "SendUpdateVmsa",
    "SendFinish", "SendCancel", "ReceiveStart", "ReceiveUpdateData", "ReceiveUpdateVmsa",
    "ReceiveFinish",
    # attestation
    "ATTESTATION_REPORT_SIZE", "ATTESTATION_SIGNED_LEN", "AttestationReport",
    "sign_attestation_report", "verify_attestation_report",
    # the VMSA (SEV-ES save area)
    "VMSA_SIZE", "VMSA_SEGMENTS", "VMSA_CPL", "VMSA_QWORDS", "VMSA_TMR_RESERVED", "VMSA_TMR_SLOT",
    "VMSA_INTEGRITY_END", "EFER_SVME", "vmsa_integrity",
]
