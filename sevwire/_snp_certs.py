"""The certificate table of the SNP extended guest request (GHCB NAE 0x80000012): what the
hypervisor writes into the guest's certificate pages so the guest gets the VCEK's chain from the
host instead of from AMD's key server (es-snp-reference 4.1).

The table is a list of 24-byte entries {GUID (16 bytes), offset (u32), length (u32)} ended by an
all-zero entry; offsets count from the table's start, and the certificates follow the
terminator. GUIDs are stored in RFC 4122 byte order (the order of the text form), as AMD's
sev-guest tool (`uuid_parse`) and VirTEE's `sev` crate write them.
"""

from __future__ import annotations

import struct
import uuid

from sevwire._errors import SevWireError

__all__ = ["SNP_CERT_ARK_GUID", "SNP_CERT_ASK_GUID", "SNP_CERT_VCEK_GUID", "SNP_CERT_VLEK_GUID",
           "parse_snp_cert_table", "snp_cert_table"]

SNP_CERT_VCEK_GUID = "63da758d-e664-4564-adc5-f4b93be8accd"
SNP_CERT_VLEK_GUID = "a8074bc2-a25a-483e-aae6-39c045a0b8a1"
SNP_CERT_ASK_GUID = "4ab7b379-bbac-4fe4-a02f-05aef327c782"
SNP_CERT_ARK_GUID = "c0b406a4-a803-4952-9743-3fb6014cd0ae"
_ENTRY = struct.Struct("<16sII")


def snp_cert_table(certs: list[tuple[str, bytes]]) -> bytes:
    """The table and the certificates after it, for (GUID text, certificate bytes) pairs."""
    offset = _ENTRY.size * (len(certs) + 1)
    entries, blobs = [], []
    for guid, data in certs:
        entries.append(_ENTRY.pack(uuid.UUID(guid).bytes, offset, len(data)))
        blobs.append(bytes(data))
        offset += len(data)
    return b"".join(entries) + bytes(_ENTRY.size) + b"".join(blobs)


def parse_snp_cert_table(blob: bytes) -> dict[str, bytes]:
    """{GUID text: certificate bytes} of a table; SevWireError if it is not one."""
    out: dict[str, bytes] = {}
    pos = 0
    while True:
        if pos + _ENTRY.size > len(blob):
            raise SevWireError("the certificate table has no terminating all-zero entry")
        raw, offset, length = _ENTRY.unpack_from(blob, pos)
        if raw == bytes(16) and offset == length == 0:
            return out
        if offset + length > len(blob):
            raise SevWireError("a certificate table entry points past the table's pages")
        out[str(uuid.UUID(bytes=raw))] = bytes(blob[offset:offset + length])
        pos += _ENTRY.size
