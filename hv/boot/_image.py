"""Guest image parsing: ELF64 x86-64 executables and flat binaries.

The parser is strict on purpose: it runs on files a user hands us and on images a guest owner
measures, so every malformed input must become one clear `ImageError`, never an IndexError from
deep inside.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ImageError", "LoadedImage", "Segment", "parse_image"]

IMAGE_BASE = 0x100000

_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_ET_EXEC = 2
_EM_X86_64 = 62
_PT_LOAD = 1
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")


class ImageError(ValueError):
    """A guest image that cannot be loaded; the message is one line for the user."""


@dataclass(frozen=True)
class Segment:
    """One piece of the image: `data` is copied to `gpa`; memory up to `memsz` is the guest's."""

    gpa: int
    data: bytes
    memsz: int

    @property
    def end(self) -> int:
        return self.gpa + self.memsz


@dataclass(frozen=True)
class LoadedImage:
    kind: str  # "elf" or "flat"
    entry: int
    segments: tuple[Segment, ...]

    @property
    def end(self) -> int:
        return max(s.end for s in self.segments)


def parse_image(image: bytes, mem_size: int) -> LoadedImage:
    """Parse `image` for a VM of `mem_size` bytes; raise ImageError for anything unloadable."""
    if not image:
        raise ImageError("image is empty")
    if image[:4] == _ELF_MAGIC:
        loaded = _parse_elf(image)
    else:
        loaded = LoadedImage("flat", IMAGE_BASE, (Segment(IMAGE_BASE, bytes(image), len(image)),))
    _check_fits(loaded, mem_size)
    return loaded


def _parse_elf(image: bytes) -> LoadedImage:
    if len(image) < _EHDR.size:
        raise ImageError(f"truncated ELF: {len(image)} bytes, the ELF header alone needs {_EHDR.size}")
    (ident, e_type, e_machine, _ver, e_entry, e_phoff, _shoff, _flags, _ehsize,
     e_phentsize, e_phnum, _shentsize, _shnum, _shstrndx) = _EHDR.unpack_from(image)
    if ident[4] != _ELFCLASS64:
        raise ImageError("not an ELF64 image (32-bit ELF is not supported)")
    if ident[5] != _ELFDATA2LSB:
        raise ImageError("not a little-endian ELF image")
    if e_machine != _EM_X86_64:
        raise ImageError(f"not an x86-64 ELF image (e_machine={e_machine})")
    if e_type != _ET_EXEC:
        raise ImageError(f"not an executable ELF image (e_type={e_type}; link with -static -no-pie)")
    if e_phnum == 0:
        raise ImageError("ELF image has no program headers")
    if e_phentsize != _PHDR.size:
        raise ImageError(f"bad ELF program header size {e_phentsize}")
    if e_phoff + e_phnum * _PHDR.size > len(image):
        raise ImageError("truncated ELF: program headers run past the end of the file")
    segments = []
    for i in range(e_phnum):
        p_type, _pflags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = _PHDR.unpack_from(
            image, e_phoff + i * _PHDR.size)
        if p_type != _PT_LOAD or p_memsz == 0:
            continue
        if p_filesz > p_memsz:
            raise ImageError(f"segment {i} at {p_paddr:#x}: file size {p_filesz:#x} exceeds memory size {p_memsz:#x}")
        if p_offset + p_filesz > len(image):
            raise ImageError(f"truncated ELF: segment {i} runs past the end of the file")
        segments.append(Segment(p_paddr, bytes(image[p_offset:p_offset + p_filesz]), p_memsz))
    if not segments:
        raise ImageError("ELF image has no loadable segments")
    segments.sort(key=lambda s: s.gpa)
    for a, b in zip(segments, segments[1:]):
        if b.gpa < a.end:
            raise ImageError(f"overlapping segments at {a.gpa:#x} and {b.gpa:#x}")
    if not any(s.gpa <= e_entry < s.end for s in segments):
        raise ImageError(f"entry point {e_entry:#x} is outside every loaded segment")
    return LoadedImage("elf", e_entry, tuple(segments))


def _check_fits(loaded: LoadedImage, mem_size: int) -> None:
    for s in loaded.segments:
        if s.gpa < IMAGE_BASE:
            raise ImageError(f"segment at {s.gpa:#x} is below the image base {IMAGE_BASE:#x}")
        if s.end > mem_size:
            what = "flat image" if loaded.kind == "flat" else f"segment at {s.gpa:#x}"
            raise ImageError(f"{what} ends at {s.end:#x}, past the end of guest memory ({mem_size:#x})")
    if not IMAGE_BASE <= loaded.entry < mem_size:
        raise ImageError(f"entry point {loaded.entry:#x} is outside guest memory")
