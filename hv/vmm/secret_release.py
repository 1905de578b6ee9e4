"""Port 0x502: an SEV-SNP guest asks its owner for its secret (docs/guest-abi.md, "Secret release").

The guest fills a two-page block it shares with the hypervisor (its attestation report, whose
report_data is its ephemeral X25519 public key) and writes the block's GPA with a 32-bit OUT.
The device reads the block as the hypervisor sees guest memory (shared pages are plaintext,
private pages ciphertext), hands the report to the guest owner and writes the owner's answer
back: status, and when released the owner's public key, IV, tag and ciphertext. The hypervisor
learns nothing it could use: the report is signed, the answer encrypted to the guest's key.

Every request is answered, not only the first: each answer is to the key of a fresh report, so
answering again releases nothing new to the host (a replayed report gets the secret encrypted to
a key only the guest that made it holds). Nothing the guest writes raises out of the VMM:

- a GPA that is not a page-aligned two-page block inside guest memory is malformed (status 3)
  and gets no answer at all, since there is no block to write it into;
- bad magic or version, or a block the guest did not share (its private pages read as
  ciphertext, and the host cannot write them), is malformed too; the answer is written only
  where the hypervisor may write (its own, shared pages);
- the owner's refusal is status 1 with its reason; an owner that gave no usable answer (no
  JSON, a wrong-sized field, an error) is status 2, "no secret to release".

Each outcome is passed to `record` (the VMM puts it into launch_info); `outcomes` keeps the
last KEEP_OUTCOMES of them and `requests` counts them all.
"""

from __future__ import annotations

import struct
from typing import Callable

from hv.hw.errors import HwError
from hv.kvm import KvmError

__all__ = [
    "BLOCK_SIZE", "KEEP_OUTCOMES", "MAGIC", "PORT", "REPORT_OFFSET", "SecretRelease", "STATUS_MALFORMED",
    "STATUS_NAMES", "STATUS_NO_SECRET", "STATUS_REFUSED", "STATUS_RELEASED", "VERSION",
]

PORT = 0x502
MAGIC = 0x52535648  # "HVSR"
VERSION = 1
STATUS_RELEASED, STATUS_REFUSED, STATUS_NO_SECRET, STATUS_MALFORMED = 0, 1, 2, 3
STATUS_NAMES = {STATUS_RELEASED: "released", STATUS_REFUSED: "refused",
                STATUS_NO_SECRET: "no secret", STATUS_MALFORMED: "malformed"}

_PAGE = 0x1000
BLOCK_SIZE = 2 * _PAGE
OFF_STATUS, OFF_REASON, REPORT_OFFSET, OFF_CIPHERTEXT = 0x008, 0x100, 0x200, 0x1000
REPORT_SIZE = 1184  # sevwire.SNP_REPORT_SIZE; the device only carries it
REASON_SIZE = 256
MAX_SECRET = 4096
_FIELDS = {"owner_pub": 32, "iv": 12, "tag": 16}
KEEP_OUTCOMES = 64


class _Malformed(Exception):
    pass


class SecretRelease:
    """The port-I/O device. `owner(report) -> dict` is the guest owner: {"owner_pub", "iv",
    "ciphertext", "tag"} (hex) or {"refuse": reason}; it may raise, which is status 2."""

    def __init__(self, vm, mem_size: int, owner: Callable[[bytes], dict],
                 record: Callable[[dict], None] | None = None):
        self.vm = vm
        self.mem_size = mem_size
        self.owner = owner
        self._record = record
        self.outcomes: list[dict] = []
        self.requests = 0

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 4:
            self._done({"gpa": None, "status": STATUS_MALFORMED,
                        "reason": f"a {8 * size}-bit write to port {PORT:#x}: the block's GPA is a "
                                  "32-bit write"})
            return
        gpa = value & 0xFFFFFFFF
        if gpa % _PAGE or gpa + BLOCK_SIZE > self.mem_size:
            # No block to answer in: nothing is written.
            self._done({"gpa": gpa, "status": STATUS_MALFORMED,
                        "reason": f"GPA {gpa:#x} is not a page-aligned two-page block inside guest "
                                  f"memory ({self.mem_size:#x} bytes)"})
            return
        outcome = {"gpa": gpa}
        try:
            report = self._read_request(gpa)
            answer = self._ask_owner(report)
        except _Malformed as e:
            outcome.update(status=STATUS_MALFORMED, reason=str(e))
        else:
            outcome.update(answer)
        outcome["answered"] = self._write_answer(gpa, outcome)
        self._done(outcome)

    # -- the steps ---------------------------------------------------------------------------------------
    def _read_request(self, gpa: int) -> bytes:
        head = self.vm.read_gpa(gpa, REPORT_OFFSET + REPORT_SIZE)
        magic, version = struct.unpack_from("<II", head)
        if magic != MAGIC:
            raise _Malformed(f"bad magic {magic:#010x} (not {MAGIC:#010x}: a private page reads as "
                             "ciphertext)")
        if version != VERSION:
            raise _Malformed(f"version {version} is not {VERSION}")
        if not self._host_writable(gpa, BLOCK_SIZE):
            raise _Malformed(f"the block at {gpa:#x} is not in pages shared with the hypervisor")
        return head[REPORT_OFFSET:]

    def _ask_owner(self, report: bytes) -> dict:
        try:
            answer = self.owner(report)
        except Exception as e:  # the owner is another party: its failure is the guest's status 2
            return {"status": STATUS_NO_SECRET, "reason": f"the guest owner gave no answer: {e}"}
        if not isinstance(answer, dict):
            return {"status": STATUS_NO_SECRET, "reason": "the guest owner's answer is not an object"}
        if "refuse" in answer:
            return {"status": STATUS_REFUSED, "reason": str(answer["refuse"])}
        try:
            fields = {}
            for name, n in (*_FIELDS.items(), ("ciphertext", None)):
                value = answer[name]
                raw = bytes.fromhex(value) if isinstance(value, str) else None
                if raw is None or (n is not None and len(raw) != n):
                    raise ValueError(f"{name} must be {n} bytes of hex" if n else f"{name} must be hex")
                fields[name] = raw
            if not 1 <= len(fields["ciphertext"]) <= MAX_SECRET:
                raise ValueError(f"ciphertext is {len(fields['ciphertext'])} bytes, not 1..{MAX_SECRET}")
        except (KeyError, ValueError) as e:
            detail = f"{e.args[0]} is missing" if isinstance(e, KeyError) else str(e)
            return {"status": STATUS_NO_SECRET, "reason": f"the guest owner's answer is unusable: {detail}"}
        return {"status": STATUS_RELEASED, "secret_len": len(fields["ciphertext"]), "fields": fields}

    def _write_answer(self, gpa: int, outcome: dict) -> bool:
        """Write status ... reason (offsets 0x8-0x1ff) and the ciphertext; False when the block is
        not the hypervisor's to write (a private page: the RMP refuses host writes)."""
        fields = outcome.pop("fields", None)
        header = bytearray(REPORT_OFFSET - OFF_STATUS)
        struct.pack_into("<II", header, 0, outcome["status"], outcome.get("secret_len", 0))
        if fields is not None:
            header[0x10 - OFF_STATUS:0x30 - OFF_STATUS] = fields["owner_pub"]
            header[0x30 - OFF_STATUS:0x3c - OFF_STATUS] = fields["iv"]
            header[0x40 - OFF_STATUS:0x50 - OFF_STATUS] = fields["tag"]
        else:
            reason = outcome["reason"].encode("ascii", "replace")[:REASON_SIZE - 1]
            header[OFF_REASON - OFF_STATUS:OFF_REASON - OFF_STATUS + len(reason)] = reason
        if not self._host_writable(gpa, BLOCK_SIZE):
            return False
        try:
            if fields is not None:
                self.vm.write_gpa(gpa + OFF_CIPHERTEXT, fields["ciphertext"])
            self.vm.write_gpa(gpa + OFF_STATUS, bytes(header))
        except (HwError, KvmError):
            return False
        return True

    def _host_writable(self, gpa: int, length: int) -> bool:
        """Every page of [gpa, gpa+length) is guest memory the hypervisor owns (with SNP on: not
        assigned to anyone in the RMP, i.e. the guest shared it)."""
        machine = self.vm.kvm.machine
        try:
            for page in range(gpa, gpa + length, _PAGE):
                spa = self.vm.gpa_to_spa(page)
                if machine.snp_enabled and machine.rmpread(spa).assigned:
                    return False
        except KvmError:
            return False
        return True

    def _done(self, outcome: dict) -> None:
        outcome["result"] = STATUS_NAMES[outcome["status"]]
        outcome.setdefault("answered", False)
        self.requests += 1
        self.outcomes.append(outcome)
        del self.outcomes[:-KEEP_OUTCOMES]
        if self._record is not None:
            self._record(outcome)
