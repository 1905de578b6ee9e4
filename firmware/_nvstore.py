"""The PSP's non-volatile storage: one state file holding the platform identity.

On a real part the SEV firmware keeps its persistent state (OCA, PEK, PDH, ownership) in SPI
flash and derives the CEK from fused chip secrets; here everything that must survive a "power
cycle" of the emulated machine lives in one JSON file:

    {"format": "hv-psp-nv", "version": 1, "body": {...}, "sha256": "<hex of the canonical body>"}

The body is ``PlatformIdentity.to_record()``: private keys as unencrypted PKCS#8 PEM (the file
*is* the PSP's private storage, so it is written with mode 0600), certificates as hex.  The
checksum catches truncation and bit rot before any key is parsed; a failed check, a missing
field, a key that does not match its certificate or a chain that does not verify is an
``NvStoreError``, never a crash half-way through loading.

Writes are atomic (temporary file in the same directory, fsync, ``os.replace``), so a crash
during PEK_GEN leaves either the old identity or the new one, as a flash write with a journal
would.  Guest keys (VEK, TEK, TIK) are never written here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from firmware._errors import NvStoreError

__all__ = ["NvStore", "NV_FORMAT", "NV_VERSION"]

NV_FORMAT = "hv-psp-nv"
NV_VERSION = 1


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class NvStore:
    """Where the identity is kept: a file, or nowhere (``path=None``: in memory only)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None

    def exists(self) -> bool:
        return self.path is not None and self.path.exists()

    def load_record(self) -> dict[str, Any] | None:
        """The stored body, checked against its checksum; None when there is no file yet."""
        if self.path is None or not self.path.exists():
            return None
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise NvStoreError(f"cannot read PSP state file {self.path}: {exc}") from exc
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise NvStoreError(f"PSP state file {self.path} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise NvStoreError(f"PSP state file {self.path} is not a JSON object")
        if doc.get("format") != NV_FORMAT:
            raise NvStoreError(f"{self.path} is not a PSP state file (format {doc.get('format')!r})")
        if doc.get("version") != NV_VERSION:
            raise NvStoreError(
                f"PSP state file {self.path} has version {doc.get('version')!r}, "
                f"this firmware reads version {NV_VERSION}"
            )
        body = doc.get("body")
        digest = doc.get("sha256")
        if not isinstance(body, dict) or not isinstance(digest, str):
            raise NvStoreError(f"PSP state file {self.path} lacks its body or checksum")
        if hashlib.sha256(_canonical(body)).hexdigest() != digest:
            raise NvStoreError(f"PSP state file {self.path} fails its checksum (corrupt or edited)")
        return body

    def save_record(self, body: dict[str, Any]) -> None:
        """Replace the state file atomically with ``body`` (no-op when in memory only)."""
        if self.path is None:
            return
        doc = {
            "format": NV_FORMAT,
            "version": NV_VERSION,
            "body": body,
            "sha256": hashlib.sha256(_canonical(body)).hexdigest(),
        }
        data = json.dumps(doc, sort_keys=True, indent=1).encode()
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), 0o600)
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            # The old file is untouched; only the half-written temporary goes.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        # Make the rename itself durable.  Some filesystems refuse to fsync a directory; the
        # data is already safe then, so that refusal is not an error.
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def save(self, identity: Any) -> None:
        """Persist ``identity`` (anything with ``to_record()``)."""
        self.save_record(identity.to_record())
