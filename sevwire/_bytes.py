"""Little-endian field helpers shared by the formats (private).

SEV stores big numbers (EC coordinates, RSA moduli, signature halves) little-endian in fixed-size
zero-padded fields, while `cryptography` speaks big-endian; these helpers are the only place the
two meet, so an endianness mistake shows up everywhere at once.
"""

from __future__ import annotations

from sevwire._errors import BufferLengthError, FieldRangeError

__all__ = ["int_to_le", "le_to_int", "require_len", "require_bytes"]


def int_to_le(value: int, size: int, what: str = "value") -> bytes:
    """`value` as a `size`-byte little-endian field."""
    if value < 0 or value.bit_length() > 8 * size:
        raise FieldRangeError(f"{what} does not fit in {size} bytes")
    return value.to_bytes(size, "little")


def le_to_int(field: bytes) -> int:
    """A little-endian field back to an integer."""
    return int.from_bytes(field, "little")


def require_len(buf: bytes, size: int, what: str) -> bytes:
    """`buf` as bytes if it is exactly `size` long; a BufferLengthError naming `what` otherwise."""
    buf = bytes(buf)
    if len(buf) != size:
        raise BufferLengthError(f"{what}: expected {size} bytes, got {len(buf)}")
    return buf


def require_bytes(value: bytes, size: int, what: str) -> bytes:
    """A fixed-size input field (key, nonce, IV) given by a caller: wrong size is a FieldRangeError."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise FieldRangeError(f"{what} must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if len(value) != size:
        raise FieldRangeError(f"{what} must be {size} bytes, got {len(value)}")
    return value
