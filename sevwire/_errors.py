"""Typed errors of the wire layer.

Every error carries the SEV_RET_* status the PSP firmware would answer with, so the firmware can
map a parse or check failure to a status code in one place (`err.status`) and the guest owner's
tools can print the one-line message. The owner side never needs the status; it is a hint for the
PSP side, which is why it is a class attribute and not part of the message.
"""

from __future__ import annotations

from sevwire._status import Status

__all__ = [
    "SevWireError",
    "BufferLengthError",
    "FieldRangeError",
    "FormatError",
    "CertificateError",
    "SignatureError",
    "PolicyError",
    "MacError",
    "WrapMacError",
    "PolicyMacError",
    "SecretMacError",
    "MeasurementMismatch",
    "DigestFinalizedError",
]


class SevWireError(Exception):
    """Base class: something on the wire is malformed or does not check out."""

    status: Status = Status.INVALID_PARAM


class BufferLengthError(SevWireError, ValueError):
    """A buffer is shorter or longer than its format requires (firmware: INVALID_LEN)."""

    status = Status.INVALID_LEN


class FieldRangeError(SevWireError, ValueError):
    """A field value does not fit its wire width (a u8 given 256, a 16-byte nonce of 15 bytes)."""

    status = Status.INVALID_PARAM


class FormatError(SevWireError, ValueError):
    """Bytes of the right length that do not follow the format (bad version, unknown algorithm)."""

    status = Status.INVALID_PARAM


class CertificateError(FormatError):
    """A certificate is malformed or of the wrong kind (usage, algorithm, curve, point)."""

    status = Status.INVALID_CERTIFICATE


class SignatureError(SevWireError):
    """A certificate or report signature does not verify, or there is no slot for the signer."""

    status = Status.BAD_SIGNATURE


class PolicyError(SevWireError, ValueError):
    """A guest policy that cannot be parsed or sets reserved bits."""

    status = Status.POLICY_FAILURE


class MacError(SevWireError):
    """An HMAC did not match: the data was not made by the holder of the key, or was altered."""

    status = Status.BAD_MEASUREMENT


class WrapMacError(MacError):
    """LAUNCH_START: WRAP_MAC is wrong (wrong PDH, wrong GODH, or a tampered WRAP_TK)."""


class PolicyMacError(MacError):
    """LAUNCH_START: POLICY_MAC does not bind the policy in the command (the policy was changed)."""

    status = Status.POLICY_FAILURE


class SecretMacError(MacError):
    """LAUNCH_SECRET: the packet's MAC is wrong (tampered data or header, or another measurement)."""


class MeasurementMismatch(MacError):
    """A launch measurement is not the one expected from the guest owner's image."""


class DigestFinalizedError(SevWireError):
    """A launch digest was updated after it was finalized by LAUNCH_MEASURE."""

    status = Status.INVALID_GUEST_STATE
