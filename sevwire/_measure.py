"""The launch digest and launch measurement (sev-reference 6).

GCTX.LD is a running SHA-256 over the plaintext of every LAUNCH_UPDATE_DATA region in issue
order (then each LAUNCH_UPDATE_VMSA page for SEV-ES). LAUNCH_MEASURE turns it into
MEASURE = HMAC-SHA256(TIK, 0x04 || API_MAJOR || API_MINOR || BUILD || POLICY u32LE || LD[32] ||
MNONCE[16]); firmware before API 0.17 MACs only POLICY || LD || MNONCE. The message is 56 bytes:
sev-reference 6 says 57, but its published vector only reproduces with the fields as listed.
Only the holder of TIK (the guest owner and the PSP) can make or check it, so a hypervisor
cannot forge a measurement for an image it changed.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from sevwire._bytes import require_bytes
from sevwire._errors import DigestFinalizedError, FieldRangeError, MeasurementMismatch

__all__ = [
    "MEASURE_CONTEXT",
    "MEASURE_API_MIN",
    "api_at_least",
    "measurement_message",
    "launch_measure",
    "verify_launch_measure",
    "LaunchDigest",
]

MEASURE_CONTEXT = 0x04
"""The context byte that starts the measurement message (0x01 starts a LAUNCH_SECRET MAC)."""

MEASURE_API_MIN = (0, 17)
"""From this API version on, the measurement and secret MACs cover the version and build."""


def api_at_least(api_major: int, api_minor: int, version: tuple[int, int] = MEASURE_API_MIN) -> bool:
    """True when firmware API api_major.api_minor is at least `version`."""
    return (int(api_major), int(api_minor)) >= version


def measurement_message(api_major: int, api_minor: int, build: int, policy: int,
                        digest: bytes, mnonce: bytes) -> bytes:
    """The bytes MACed into MEASURE: 56 bytes from API 0.17, 52 bytes before."""
    digest = require_bytes(digest, 32, "launch digest")
    mnonce = require_bytes(mnonce, 16, "mnonce")
    try:
        policy_le = struct.pack("<I", int(policy))
        if not api_at_least(api_major, api_minor):
            return policy_le + digest + mnonce
        head = struct.pack("<BBBB", MEASURE_CONTEXT, api_major, api_minor, build)
    except struct.error:
        raise FieldRangeError("measurement: API version and build must be bytes, policy a u32") from None
    return head + policy_le + digest + mnonce


def launch_measure(tik: bytes, api_major: int, api_minor: int, build: int, policy: int,
                   digest: bytes, mnonce: bytes) -> bytes:
    """MEASURE (32 bytes) as LAUNCH_MEASURE returns it."""
    tik = require_bytes(tik, 16, "TIK")
    msg = measurement_message(api_major, api_minor, build, policy, digest, mnonce)
    return hmac.new(tik, msg, hashlib.sha256).digest()


def verify_launch_measure(measurement: bytes, tik: bytes, api_major: int, api_minor: int, build: int,
                          policy: int, digest: bytes, mnonce: bytes) -> None:
    """Recompute MEASURE from the expected digest and compare in constant time; a
    MeasurementMismatch means the launched image, policy or firmware is not what was expected."""
    measurement = require_bytes(measurement, 32, "measurement")
    expected = launch_measure(tik, api_major, api_minor, build, policy, digest, mnonce)
    if not hmac.compare_digest(expected, measurement):
        raise MeasurementMismatch("launch measurement does not match the expected image, policy and firmware")


class LaunchDigest:
    """GCTX.LD: a running SHA-256 fed by LAUNCH_UPDATE_DATA/VMSA and read once by LAUNCH_MEASURE.

    `finalize()` returns the digest and refuses further updates, the way the guest context stops
    accepting LAUNCH_UPDATE_* after LAUNCH_MEASURE; `peek()` reads it without finalizing."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._final: bytes | None = None
        self.length = 0

    def update(self, data: bytes) -> None:
        if self._final is not None:
            raise DigestFinalizedError("launch digest is already finalized by LAUNCH_MEASURE")
        self._hash.update(data)
        self.length += len(data)

    def peek(self) -> bytes:
        return self._final if self._final is not None else self._hash.copy().digest()

    def finalize(self) -> bytes:
        if self._final is None:
            self._final = self._hash.digest()
        return self._final

    @property
    def finalized(self) -> bool:
        return self._final is not None
