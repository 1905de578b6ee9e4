"""The PSP's non-volatile storage: one state file holding the platform identity.

On a real part the SEV firmware keeps its persistent state (OCA, PEK, PDH, ownership) in SPI
flash and derives the CEK from fused chip secrets; here everything that must survive a "power
cycle" of the emulated machine lives in one JSON file:

    {"format": "hv-psp-nv", "version": 1, "body": {...}, "sha256": "<hex of the canonical body>"}

The body is ``PlatformIdentity.to_record()``: private keys as unencrypted PKCS#8 PEM (the file
*is* the PSP's private storage, so it is written with mode 0600), certificates as hex.  The
checksum catches truncation and bit rot before any key is parsed; a failed check, a missing
field, a key that does not match its certificate or a chain that does not verify is an
``NvStoreError``, never a crash half-way through loading.  Only a regular file of at most
``MAX_STATE_BYTES`` is read: a FIFO would block the load forever and a device never ends.

Several hv processes may share one state file (a ``hv run --sev`` while the platform owner runs
``hv psp rotate``), so every access holds an exclusive ``fcntl.flock`` on a lock file beside it,
``<name>.lock`` (empty, kept).  The firmware makes each change as one read-modify-write under
that lock (``locked()``: re-read the file, apply the command, save), so a process that loaded
the state earlier can never overwrite a change another process has already acknowledged.  A
store whose directory is read-only cannot have its lock file made; nobody can change that state,
so it is read without the lock.

Writes are atomic: the new state goes to one fixed temporary name beside the file,
``.<name>.tmp`` (created exclusively, mode 0600, never through a symlink), is fsynced and renamed
over the file, so a crash during PEK_GEN leaves either the old identity or the new one, as a
flash write with a journal would.  The temporary holds private keys.  A process killed in the
middle of a save (SIGKILL, power loss) cannot delete it, so whoever takes the lock next, to load
or to save, deletes it first: only the lock holder writes it, so one found under the lock is
always stale.  (O_TMPFILE would close even that window, but it cannot replace an existing name
atomically and not every filesystem has it.)  Guest keys (VEK, TEK, TIK) are never written here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from firmware._errors import NvStoreError, NvWriteError

__all__ = ["NvStore", "NV_FORMAT", "NV_VERSION", "MAX_STATE_BYTES", "LOCK_WAIT_SECONDS"]

NV_FORMAT = "hv-psp-nv"
NV_VERSION = 1
MAX_STATE_BYTES = 1 << 20
"""A state file is about 20 KB; anything past 1 MiB is not one, and is not read into memory."""
LOCK_WAIT_SECONDS = 60.0
"""How long to wait for another process's lock (it is held for a load or one command: well under
a second, or a few seconds while the first process creates a new identity)."""


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class NvStore:
    """Where the identity is kept: a file, or nowhere (``path=None``: in memory only).

    One instance belongs to one firmware and is used by one thread at a time (the PSP runs one
    mailbox command at a time); ``locked()`` nests within an instance."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._depth = 0

    @property
    def lock_path(self) -> Path | None:
        return None if self.path is None else self.path.with_name(self.path.name + ".lock")

    def exists(self) -> bool:
        return self.path is not None and self.path.exists()

    # -- the lock ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state file's exclusive lock for the block (nothing to lock in memory).

        ``NvWriteError`` when the lock file cannot be made for another reason than read-only
        storage, or when another process holds the lock longer than ``LOCK_WAIT_SECONDS``."""
        if self.path is None or self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        fd = self._open_lock()
        try:
            if fd is not None:
                self._acquire(fd)
                self._remove_stale_temporaries()
            self._depth = 1
            yield
        finally:
            self._depth = 0
            if fd is not None:
                os.close(fd)  # closing the only descriptor releases the flock

    def _open_lock(self) -> int | None:
        assert self.path is not None and self.lock_path is not None
        flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | flags, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not self.path.parent.is_dir():
                raise NvWriteError(f"cannot lock PSP state file {self.path}: {exc.strerror}") from None
            try:  # read-only storage: share an existing lock file if there is one
                fd = os.open(self.lock_path, os.O_RDONLY | flags)
            except OSError:
                return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NvWriteError(f"cannot lock PSP state file {self.path}: "
                               f"{self.lock_path} is not a regular file")
        return fd

    def _acquire(self, fd: int) -> None:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as exc:
                raise NvWriteError(f"cannot lock PSP state file {self.path}: {exc.strerror}") from None
            if time.monotonic() >= deadline:
                raise NvWriteError(f"PSP state file {self.path} stayed locked by another process "
                                   f"for {LOCK_WAIT_SECONDS:.0f} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def _temporary(self) -> Path:
        assert self.path is not None
        return self.path.with_name(f".{self.path.name}.tmp")

    def _remove_stale_temporaries(self) -> None:
        """Under the lock: delete what a killed save left (and the randomly named temporaries
        earlier versions of this store made with mkstemp).  A failure to delete is left to the
        next save, which fails loudly if the name stays in its way."""
        assert self.path is not None
        pattern = str(self.path.parent / f".{glob.escape(self.path.name)}.*.tmp")
        for stale in (self._temporary(), *map(Path, glob.glob(pattern))):
            with contextlib.suppress(OSError):
                stale.unlink()

    # -- reading -------------------------------------------------------------------------------

    def _read(self) -> bytes | None:
        assert self.path is not None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NvStoreError(f"cannot read PSP state file {self.path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NvStoreError(f"PSP state file {self.path} is not a regular file")
            chunks, size = [], 0
            while size <= MAX_STATE_BYTES:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as exc:
            raise NvStoreError(f"cannot read PSP state file {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        if size > MAX_STATE_BYTES:
            raise NvStoreError(f"PSP state file {self.path} is larger than {MAX_STATE_BYTES} bytes")
        return b"".join(chunks)

    def load_record(self) -> dict[str, Any] | None:
        """The stored body, checked against its checksum; None when there is no file yet."""
        if self.path is None:
            return None
        with self.locked():
            raw = self._read()
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
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

    # -- writing -------------------------------------------------------------------------------

    def save_record(self, body: dict[str, Any]) -> None:
        """Replace the state file atomically with ``body`` (no-op when in memory only).
        ``NvWriteError`` if it cannot be written; the old file is untouched then."""
        if self.path is None:
            return
        doc = {
            "format": NV_FORMAT,
            "version": NV_VERSION,
            "body": body,
            "sha256": hashlib.sha256(_canonical(body)).hexdigest(),
        }
        data = json.dumps(doc, sort_keys=True, indent=1).encode()
        with self.locked():
            self._write(data)
            # Make the rename itself durable.  Some filesystems refuse to fsync a directory;
            # the data is already safe then, so that refusal is not an error.
            with contextlib.suppress(OSError):
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

    def _write(self, data: bytes) -> None:
        assert self.path is not None
        tmp = self._temporary()
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise NvWriteError(f"cannot write PSP state file {self.path}: {exc.strerror}") from None
        try:
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException as exc:
            # The old file is untouched; only the half-written temporary goes.
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(exc, OSError):
                raise NvWriteError(f"cannot write PSP state file {self.path}: "
                                   f"{exc.strerror or exc}") from None
            raise

    def save(self, identity: Any) -> None:
        """Persist ``identity`` (anything with ``to_record()``)."""
        self.save_record(identity.to_record())
