"""The SEV guest policy (u32, sev-reference 5.5) and a parser for what users type.

The policy is chosen by the guest owner, bound into the session by POLICY_MAC and into the launch
measurement, and enforced by the PSP (NODBG refuses DBG_*, NOSEND refuses SEND_*). Bits 15:6 are
reserved; bits 23:16 and 31:24 are the minimum firmware API version a guest may be sent to.
"""

from __future__ import annotations

import enum

from sevwire._errors import PolicyError

__all__ = ["Policy", "parse_policy", "policy_api_major", "policy_api_minor", "POLICY_RESERVED_MASK"]

POLICY_RESERVED_MASK = 0x0000FFC0


class Policy(enum.IntFlag, boundary=enum.KEEP):
    """Guest policy bits. API_MAJOR/API_MINOR are byte fields, kept as raw bits by KEEP."""

    NODBG = 1 << 0
    NOKS = 1 << 1
    ES = 1 << 2
    NOSEND = 1 << 3
    DOMAIN = 1 << 4
    SEV = 1 << 5


def policy_api_major(policy: int) -> int:
    """Minimum firmware API major for sending (bits 23:16)."""
    return (int(policy) >> 16) & 0xFF


def policy_api_minor(policy: int) -> int:
    """Minimum firmware API minor for sending (bits 31:24)."""
    return (int(policy) >> 24) & 0xFF


def parse_policy(value: int | str, *, allow_reserved: bool = False) -> Policy:
    """Parse a policy given as an int, a number string ("0x5", "5", "0b101") or flag names
    ("NODBG|NOKS", "nodbg,es"). Refuses values wider than 32 bits, and reserved bits 15:6
    unless `allow_reserved` (a test of how the firmware treats them may want them set)."""
    if isinstance(value, bool):
        raise PolicyError(f"policy must be an integer or string, not {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        number = _parse_text(value)
    else:
        raise PolicyError(f"policy must be an integer or string, not {type(value).__name__}")
    if not 0 <= number <= 0xFFFFFFFF:
        raise PolicyError(f"policy 0x{number:x} does not fit in 32 bits")
    if number & POLICY_RESERVED_MASK and not allow_reserved:
        raise PolicyError(f"policy 0x{number:08x} sets reserved bits 15:6")
    return Policy(number)


def _parse_text(text: str) -> int:
    text = text.strip()
    if not text:
        raise PolicyError("empty policy")
    try:
        return int(text, 0)
    except ValueError:
        pass
    number = 0
    for word in text.replace(",", "|").split("|"):
        name = word.strip().upper()
        if not name:
            continue
        try:
            number |= Policy[name].value
        except KeyError:
            known = ", ".join(m.name for m in Policy)
            raise PolicyError(f"unknown policy flag {word.strip()!r} (known: {known})") from None
    return number
