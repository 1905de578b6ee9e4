"""Minimal ELF64 images written byte by byte (independently of hv's parser) for loader tests."""

import struct


def elf(segments, entry, machine=62, cls=2, etype=2, phentsize=56):
    """segments: list of (paddr, data, memsz)."""
    phoff = 64
    data_off = phoff + 56 * len(segments)
    ph = b""
    blobs = b""
    for paddr, data, memsz in segments:
        ph += struct.pack("<IIQQQQQQ", 1, 7, data_off + len(blobs), paddr, paddr, len(data), memsz, 0x1000)
        blobs += data
    ident = b"\x7fELF" + bytes([cls, 1, 1]) + bytes(9)
    hdr = struct.pack("<16sHHIQQQIHHHHHH", ident, etype, machine, 1, entry, phoff, 0, 0, 64,
                      phentsize, len(segments), 64, 0, 0)
    return hdr + ph + blobs
