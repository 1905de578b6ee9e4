"""Reading the guest owner's inputs: files and typed values, each checked for size and format.

Everything the owner reads may come from the untrusted host (exported certificates, a reported
measurement), so every reader checks lengths and formats and fails with one clear line naming
the file; none of them guesses or pads.
"""

from __future__ import annotations

import os
import pathlib
import re

import sevwire
from hv.owner._errors import OwnerInputError

__all__ = [
    "read_file",
    "read_sev_cert",
    "read_amd_cert",
    "read_tk",
    "parse_hex",
    "parse_size",
    "parse_int",
    "write_outputs",
    "TK_SIZE",
    "DEFAULT_MEM",
    "DEFAULT_CBITPOS",
]

TK_SIZE = 32
DEFAULT_MEM = 64 << 20
DEFAULT_CBITPOS = 47


def read_file(path: str | os.PathLike, what: str, size: int | None = None) -> bytes:
    """The bytes of `path`, exactly `size` long when given."""
    p = pathlib.Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise OwnerInputError(f"{what} {p}: no such file") from None
    except IsADirectoryError:
        raise OwnerInputError(f"{what} {p}: is a directory") from None
    except OSError as exc:
        raise OwnerInputError(f"{what} {p}: {exc.strerror}") from None
    if size is not None and len(data) != size:
        raise OwnerInputError(f"{what} {p}: expected {size} bytes, got {len(data)}")
    return data


def read_sev_cert(path: str | os.PathLike, what: str) -> sevwire.SevCert:
    """A 2084-byte SEV certificate."""
    data = read_file(path, what, sevwire.SEV_CERT_SIZE)
    try:
        return sevwire.SevCert.decode(data)
    except sevwire.SevWireError as exc:
        raise OwnerInputError(f"{what} {path}: {exc}") from None


def read_amd_cert(path: str | os.PathLike, what: str) -> sevwire.AmdCert:
    """An AMD (ARK/ASK) certificate of the length its header implies."""
    data = read_file(path, what)
    try:
        return sevwire.AmdCert.decode(data)
    except sevwire.SevWireError as exc:
        raise OwnerInputError(f"{what} {path}: {exc}") from None


def read_tk(path: str | os.PathLike) -> sevwire.TransportKeys:
    """tmp_tk.bin: TEK || TIK, 32 bytes."""
    data = read_file(path, "transport keys", TK_SIZE)
    return sevwire.TransportKeys(data[:16], data[16:])


def parse_hex(text: str, size: int | None, what: str) -> bytes:
    """Hex (optionally 0x-prefixed, spaces and colons allowed) of exactly `size` bytes."""
    cleaned = re.sub(r"[\s:]", "", text)
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    try:
        value = bytes.fromhex(cleaned)
    except ValueError:
        raise OwnerInputError(f"{what}: not a hex string") from None
    if size is not None and len(value) != size:
        raise OwnerInputError(f"{what}: expected {size} bytes ({2 * size} hex digits), got {len(value)}")
    return value


_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str | int, what: str = "memory size") -> int:
    """A size as QEMU spells it: 67108864, 0x4000000, 64M, 1G, 512K."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|\d+)\s*([kKmMgG]?)(i?B)?\s*", text)
        if not match:
            raise OwnerInputError(f"{what}: {text!r} is not a size (e.g. 64M, 1G, 0x4000000)")
        value = int(match.group(1), 0) * _SUFFIX[match.group(2).upper()]
    if value <= 0:
        raise OwnerInputError(f"{what}: must be positive")
    return value


def parse_int(text: str | int, what: str, bits: int) -> int:
    """An unsigned integer, decimal or 0x-hex, that fits in `bits`."""
    try:
        value = text if isinstance(text, int) else int(str(text).strip(), 0)
    except ValueError:
        raise OwnerInputError(f"{what}: {text!r} is not an integer") from None
    if isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise OwnerInputError(f"{what}: {value} does not fit in {bits} bits")
    return value


def write_outputs(directory: str | os.PathLike, files: dict[str, bytes], secret: tuple[str, ...] = ()) -> list[str]:
    """Write `files` into `directory` (created if missing); names in `secret` are made 0600
    before any byte is written, since they hold transport keys."""
    d = pathlib.Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OwnerInputError(f"output directory {d}: {exc.strerror}") from None
    written = []
    for name, data in files.items():
        path = d / name
        mode = 0o600 if name in secret else 0o644
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            if name in secret:
                os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise OwnerInputError(f"{path}: {exc.strerror}") from None
        written.append(str(path))
    return written
