"""The guest owner's answer to a launched guest: release the secret only to the expected launch.

`respond` is what runs behind `hv run --sev --owner-exec CMD`: the VMM forwards what
LAUNCH_MEASURE returned plus the platform's API version, build and the guest's policy; the owner
recomputes MEASURE with TIK over the digest it expects from the image file and, only if it
matches, packages the secret for LAUNCH_SECRET. A hypervisor that changed one byte of the image,
the policy or the reported firmware version gets a refusal, and cannot forge a matching MEASURE
without TIK.
"""

from __future__ import annotations

import sevwire
from hv.owner._errors import OwnerInputError
from hv.owner._inputs import TK_SIZE, parse_hex, parse_int

__all__ = ["respond", "REQUEST_FIELDS", "MAX_SECRET"]

MAX_SECRET = 4096
"""The guest ABI's secret page (GPA 0x9000) is one 4 KiB page."""

REQUEST_FIELDS = ("measurement", "mnonce", "api_major", "api_minor", "build", "policy")


def _parse_request(request: object) -> dict:
    if not isinstance(request, dict):
        raise OwnerInputError("request must be a JSON object")
    missing = [f for f in REQUEST_FIELDS if f not in request]
    if missing:
        raise OwnerInputError(f"request is missing {', '.join(missing)}")
    for field in ("measurement", "mnonce"):
        if not isinstance(request[field], str):
            raise OwnerInputError(f"request {field} must be a hex string")
    for field in ("api_major", "api_minor", "build", "policy"):
        if isinstance(request[field], bool) or not isinstance(request[field], (int, str)):
            raise OwnerInputError(f"request {field} must be an integer")
    return {
        "measurement": parse_hex(request["measurement"], 32, "request measurement"),
        "mnonce": parse_hex(request["mnonce"], 16, "request mnonce"),
        "api_major": parse_int(request["api_major"], "request api_major", 8),
        "api_minor": parse_int(request["api_minor"], "request api_minor", 8),
        "build": parse_int(request["build"], "request build", 8),
        "policy": parse_int(request["policy"], "request policy", 32),
    }


def respond(request: dict, tk: bytes, expected_digest: bytes, secret: bytes, *,
            expected_policy: int | None = None, es_digest: bytes | None = None) -> dict:
    """{"header": hex52, "data": hex} for a launch whose measurement matches `expected_digest`,
    {"refuse": reason} otherwise. A malformed request or wrong-sized key raises OwnerInputError.
    With `expected_policy`, a launch under any other policy is refused too (the measurement
    proves which policy the PSP enforced; this checks it is the one the owner wants).
    `es_digest`, when given, is expected instead for a launch whose policy has the ES bit (its
    initial VMSA is measured too): taking the policy from the request is safe because the
    measurement's MAC covers it, so a host that flips the bit gets a mismatch."""
    if len(tk) != TK_SIZE:
        raise OwnerInputError(f"transport keys must be {TK_SIZE} bytes (TEK||TIK), got {len(tk)}")
    for digest in (expected_digest, es_digest):
        if digest is not None and len(digest) != 32:
            raise OwnerInputError(f"expected digest must be 32 bytes, got {len(digest)}")
    if len(secret) > MAX_SECRET:
        raise OwnerInputError(f"secret is {len(secret)} bytes; the guest's secret page holds {MAX_SECRET}")
    req = _parse_request(request)
    tek, tik = bytes(tk[:16]), bytes(tk[16:])
    if es_digest is not None and req["policy"] & sevwire.Policy.ES:
        expected_digest = es_digest
    try:
        sevwire.verify_launch_measure(req["measurement"], tik, req["api_major"], req["api_minor"],
                                      req["build"], req["policy"], bytes(expected_digest), req["mnonce"])
    except sevwire.MeasurementMismatch:
        return {"refuse": "launch measurement does not match the expected image, policy and firmware"}
    if expected_policy is not None and req["policy"] != int(expected_policy):
        return {"refuse": f"guest policy 0x{req['policy']:08x} is not the expected 0x{int(expected_policy):08x}"}
    header, data = sevwire.package_secret(tek, tik, bytes(secret), req["measurement"],
                                          req["api_major"], req["api_minor"])
    return {"header": header.hex(), "data": data.hex()}
