"""Reading an initramfs back: the regular files of a newc cpio archive, gzip-compressed or not.

hv's test initramfs (tools/linux.py) holds a marker file, SECRET_PATH, that nothing else holds:
the attack lab takes its contents as the ground truth of a kernel trial (hv.attacks.verdict),
and the Linux tests look for it in memory dumps. Reading it from the archive the guest boots,
rather than from a constant, keeps the judge honest about which initrd it judges.

The format (Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte ASCII header
("070701" and thirteen 8-digit hex fields), the name with its NUL padded to 4 bytes from the
header's start, the data padded to 4, up to the entry named "TRAILER!!!". The kernel also takes
several archives one after another and compressed ones; this reader takes one archive, plain or
in one gzip member, which is what tools/linux.py writes.
"""

from __future__ import annotations

import gzip
import stat
import zlib

__all__ = ["InitramfsError", "POWEROFF_PARAM", "SECRET_PATH", "initrd_file", "newc_files"]

SECRET_PATH = "etc/hv-secret"       # tools/linux.py's marker file, relative as in the archive
POWEROFF_PARAM = "hv.init=poweroff"  # the test initramfs's /init powers off when it sees this
_MAGIC = b"070701"
_HEADER = 110
_TRAILER = "TRAILER!!!"
_MODE, _FILESIZE, _NAMESIZE = 1, 6, 11  # field indices in the header


class InitramfsError(ValueError):
    """The initrd is not an archive this reader takes; the message says why, in one line."""


def _field(archive: bytes, pos: int, index: int) -> int:
    text = archive[pos + 6 + 8 * index:pos + 14 + 8 * index]
    try:
        return int(text, 16)
    except ValueError:
        raise InitramfsError(f"bad cpio header field at offset {pos}") from None


def newc_files(archive: bytes) -> dict[str, bytes]:
    """The regular files of a newc archive, name -> contents (names without a leading "./")."""
    files: dict[str, bytes] = {}
    pos = 0
    while True:
        if archive[pos:pos + 6] != _MAGIC:
            raise InitramfsError("not a newc cpio archive (plain or gzip)" if pos == 0 else
                                 f"no newc cpio header at offset {pos}")
        name_end = pos + _HEADER + _field(archive, pos, _NAMESIZE)
        data = (name_end + 3) & ~3
        end = data + _field(archive, pos, _FILESIZE)
        if end > len(archive):
            raise InitramfsError(f"the cpio archive ends inside the member at offset {pos}")
        name = archive[pos + _HEADER:name_end].rstrip(b"\0").decode("utf-8", "replace")
        if name == _TRAILER:
            return files
        if stat.S_ISREG(_field(archive, pos, _MODE)):
            files[name.removeprefix("./")] = archive[data:end]
        pos = (end + 3) & ~3


def initrd_file(initrd: bytes, name: str) -> bytes | None:
    """The contents of regular file `name` in `initrd` (gzip or plain newc), None if absent."""
    if initrd[:2] == b"\x1f\x8b":
        try:
            initrd = gzip.decompress(initrd)
        except (OSError, EOFError, zlib.error) as e:
            raise InitramfsError(f"the initrd's gzip stream is damaged: {e}") from None
    return newc_files(initrd).get(name)
