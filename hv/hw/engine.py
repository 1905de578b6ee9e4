"""The memory controller's AES engine: AES-128 per key slot with a physical-address tweak.

One slot per ASID (1..max_asid) plus slot 0 for the host's SME key. Nothing here returns a key:
slots are written through `KeySlotPort`, a capability the machine hands to the PSP alone.

Tweak modes (sev-reference.md section 3):
  xe-linear   C = AES_K(P ^ T(p))             first Zen 1 parts
  xex-linear  C = AES_K(P ^ T(p)) ^ T(p)      later Zen 1 parts
  xex-random  as xex, T(p) = AES_kt(p >> 4) with kt drawn at power-on   Zen 2 and later
In the linear modes T(p) is the XOR of constants t_i over the set bits i >= 4 of the host
physical address p; each t_i is a 4-byte pattern repeated four times and is shared by every key
of the machine, which is exactly what SEVurity exploited.
All work is vectorised: one cipher call per request, never a Python loop per block.
"""

from __future__ import annotations

import enum
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hv.hw.errors import AsidError, KeySlotError

__all__ = ["AesEngine", "KeySlotPort", "TweakMode", "TWEAK_BITS"]

TWEAK_BITS = 48  # address bits that feed the linear tweak (4..47)
_CHUNK = 1 << 21


class TweakMode(enum.Enum):
    XE_LINEAR = "xe-linear"
    XEX_LINEAR = "xex-linear"
    XEX_RANDOM = "xex-random"


class AesEngine:
    """AES-128 over 16-byte blocks, keyed by slot, tweaked by host physical address."""

    def __init__(self, max_asid: int, mode: TweakMode = TweakMode.XEX_RANDOM,
                 tweak_constants: list[int] | None = None, rng=os.urandom):
        self.max_asid = max_asid
        self.mode = mode
        self._slots: dict[int, Cipher] = {}
        self._slots[0] = Cipher(algorithms.AES(rng(16)), modes.ECB())  # the host's SME key, new each boot
        if tweak_constants is None:
            tweak_constants = [int.from_bytes(rng(4), "little") for _ in range(TWEAK_BITS)]
            tweak_constants[:4] = [0, 0, 0, 0]
        if len(tweak_constants) != TWEAK_BITS or any(not 0 <= t < 1 << 32 for t in tweak_constants):
            raise ValueError(f"tweak constants: need {TWEAK_BITS} 32-bit patterns")
        # t_0..t_3 do not exist: address bits 3:0 select bytes inside a block.
        self._t = np.array([0, 0, 0, 0] + list(tweak_constants[4:]), dtype=np.uint32)
        self._byte_tables: np.ndarray | None = None
        # T of the in-page block offsets (bits 4..11), looked up instead of recomputed.
        offs = np.arange(256, dtype=np.uint64) << np.uint64(4)
        self._page_table = self._linear(offs)
        self._tweak_key = algorithms.AES(rng(16))
        self._bufs: dict[str, np.ndarray] = {}

    # -- the tweak ---------------------------------------------------------------------------
    def tweak_constants(self) -> list[int]:
        """The linear-mode constants t_i as 32-bit patterns (t_0..t_3 are 0).

        These are properties of the part, not keys: SEVurity recovers them from outside, and the
        attack lab's tests compare what it recovers against this list.
        """
        return [int(t) for t in self._t]

    def _linear(self, addrs: np.ndarray) -> np.ndarray:
        """T(p) for an array of addresses: the XOR of t_i over the set bits i, computed a byte of
        address at a time from 256-entry tables (6 lookups instead of 44 bit tests)."""
        if self._byte_tables is None:
            tables = np.zeros((TWEAK_BITS // 8, 256), dtype=np.uint32)
            for k in range(TWEAK_BITS // 8):
                for v in range(256):
                    acc = 0
                    for b in range(8):
                        if v >> b & 1:
                            acc ^= int(self._t[8 * k + b])
                    tables[k, v] = acc
            self._byte_tables = tables
        out = np.zeros(addrs.shape, dtype=np.uint32)
        for k in range(TWEAK_BITS // 8):
            out ^= self._byte_tables[k][((addrs >> np.uint64(8 * k)) & np.uint64(0xFF)).astype(np.intp)]
        return out

    def _scratch(self, name: str, nbytes: int) -> np.ndarray:
        """A reusable buffer: fresh allocations cost more than the AES itself on large requests."""
        buf = self._bufs.get(name)
        if buf is None or buf.size < nbytes:
            buf = np.empty(max(nbytes, 1 << 16), dtype=np.uint8)
            self._bufs[name] = buf
        return buf[:nbytes]

    def _tweaks(self, spa: int, nblocks: int) -> np.ndarray:
        """Linear-mode T for `nblocks` consecutive blocks from `spa`, as 2 * nblocks contiguous
        uint64 (so the XORs with the data run on whole words without broadcasting)."""
        first_page, last = spa >> 12, (spa + nblocks * 16 - 1) >> 12
        pages = np.arange(first_page, last + 1, dtype=np.uint64) << np.uint64(12)
        full = (self._linear(pages)[:, None] ^ self._page_table[None, :]).reshape(-1)
        start = (spa & 0xFFF) >> 4
        t32 = full[start:start + nblocks].astype(np.uint64)
        return np.repeat(t32 | (t32 << np.uint64(32)), 2)  # the 4-byte pattern, 16 bytes a block

    # -- cipher --------------------------------------------------------------------------------
    def _cipher(self, slot: int) -> Cipher:
        c = self._slots.get(slot)
        if c is None:
            raise KeySlotError(f"key slot {slot} holds no key (guest not activated)")
        return c

    def encrypt_into(self, slot: int, spa: int, src: np.ndarray, dst: np.ndarray) -> None:
        """Encrypt whole 16-byte blocks that live at host physical address `spa` into `dst`.

        Large requests go through in 2 MiB chunks so that the tweak, XOR and AES passes work on
        data still in the CPU cache instead of streaming the whole buffer through memory 5 times.
        """
        _nblocks(src, dst, spa)
        for off in range(0, src.size, _CHUNK):
            self._encrypt_chunk(slot, spa + off, src[off:off + _CHUNK], dst[off:off + _CHUNK],
                                _room(dst, off))

    def _tweak_stream(self, spa: int):
        """XOR with T over consecutive blocks from `spa`, as one AES-CTR pass: in the random
        mode T(p) = AES_kt(p >> 4), which is exactly CTR's keystream with the block index of p
        as the counter. One AES-NI pass instead of building addresses, encrypting them and
        XORing in numpy."""
        return Cipher(self._tweak_key, modes.CTR((spa >> 4).to_bytes(16, "big"))).encryptor()

    def _encrypt_chunk(self, slot: int, spa: int, src: np.ndarray, dst: np.ndarray,
                       room: np.ndarray | None = None) -> None:
        n = src.size // 16
        cipher = self._cipher(slot)
        if self.mode is TweakMode.XEX_RANDOM:
            tmp = self._scratch("data", n * 16 + 16)
            out = self._scratch("out", n * 16 + 16)
            self._tweak_stream(spa).update_into(src, tmp)               # P ^ T
            cipher.encryptor().update_into(tmp[:n * 16], out)          # AES_K(P ^ T)
            if room is not None:  # straight into dst: no copy
                self._tweak_stream(spa).update_into(out[:n * 16], room)  # ... ^ T
                return
            self._tweak_stream(spa).update_into(out[:n * 16], tmp)      # ... ^ T
            dst[:] = tmp[:n * 16]
            return
        t = self._tweaks(spa, n)
        tmp = self._scratch("data", n * 16 + 16)
        np.bitwise_xor(src.view(np.uint64), t, out=tmp[:n * 16].view(np.uint64))
        out = self._scratch("out", n * 16 + 16)
        cipher.encryptor().update_into(tmp[:n * 16], out)
        if self.mode is TweakMode.XE_LINEAR:
            dst[:] = out[:n * 16]
        else:
            np.bitwise_xor(out[:n * 16].view(np.uint64), t, out=dst.view(np.uint64))

    def decrypt_into(self, slot: int, spa: int, src: np.ndarray, dst: np.ndarray) -> None:
        _nblocks(src, dst, spa)
        for off in range(0, src.size, _CHUNK):
            self._decrypt_chunk(slot, spa + off, src[off:off + _CHUNK], dst[off:off + _CHUNK],
                                _room(dst, off))

    def _decrypt_chunk(self, slot: int, spa: int, src: np.ndarray, dst: np.ndarray,
                       room: np.ndarray | None = None) -> None:
        n = src.size // 16
        cipher = self._cipher(slot)
        if self.mode is TweakMode.XEX_RANDOM:
            tmp = self._scratch("data", n * 16 + 16)
            out = self._scratch("out", n * 16 + 16)
            self._tweak_stream(spa).update_into(src, tmp)               # C ^ T
            cipher.decryptor().update_into(tmp[:n * 16], out)          # AES_K^-1(C ^ T)
            if room is not None:  # straight into dst: no copy
                self._tweak_stream(spa).update_into(out[:n * 16], room)  # ... ^ T
                return
            self._tweak_stream(spa).update_into(out[:n * 16], tmp)      # ... ^ T
            dst[:] = tmp[:n * 16]
            return
        t = self._tweaks(spa, n)
        tmp = self._scratch("data", n * 16 + 16)
        if self.mode is TweakMode.XE_LINEAR:
            tmp[:n * 16] = src
        else:
            np.bitwise_xor(src.view(np.uint64), t, out=tmp[:n * 16].view(np.uint64))
        out = self._scratch("out", n * 16 + 16)
        cipher.decryptor().update_into(tmp[:n * 16], out)
        np.bitwise_xor(out[:n * 16].view(np.uint64), t, out=dst.view(np.uint64))

    def encrypt(self, slot: int, spa: int, plaintext) -> np.ndarray:
        """Convenience form of encrypt_into returning a new array."""
        src = _as_u8(plaintext)
        dst = np.empty_like(src)
        self.encrypt_into(slot, spa, src, dst)
        return dst

    def decrypt(self, slot: int, spa: int, ciphertext) -> np.ndarray:
        src = _as_u8(ciphertext)
        dst = np.empty_like(src)
        self.decrypt_into(slot, spa, src, dst)
        return dst

    # -- slots (reached only through KeySlotPort) -----------------------------------------------
    def _program(self, asid: int, key: bytes) -> None:
        self._check_asid(asid)
        if len(key) != 16:
            raise ValueError("AES-128 key slots take 16-byte keys")
        self._slots[asid] = Cipher(algorithms.AES(bytes(key)), modes.ECB())

    def _clear(self, asid: int) -> None:
        self._check_asid(asid)
        self._slots.pop(asid, None)

    def has_key(self, slot: int) -> bool:
        return slot in self._slots

    def _check_asid(self, asid: int) -> None:
        if not 1 <= asid <= self.max_asid:
            raise AsidError(f"ASID {asid} is outside 1..{self.max_asid}")


class KeySlotPort:
    """Write-only access to the engine's guest key slots: the PSP's capability, nobody else's."""

    __slots__ = ("_engine",)

    def __init__(self, engine: AesEngine):
        self._engine = engine

    def program_key(self, asid: int, key: bytes) -> None:
        self._engine._program(asid, key)

    def clear_key(self, asid: int) -> None:
        self._engine._clear(asid)


def _as_u8(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    return np.frombuffer(bytes(data), dtype=np.uint8).copy()


def _room(dst: np.ndarray, off: int) -> np.ndarray | None:
    """dst from `off` with the 15 spare bytes `cryptography`'s update_into insists on, when the
    next chunk of dst provides them (it writes only the chunk's own bytes; the next chunk is
    written after, so even a write into the spare bytes would be overwritten)."""
    if off + _CHUNK + 15 <= dst.size:
        return dst[off:off + _CHUNK + 15]
    return None


def _nblocks(src: np.ndarray, dst: np.ndarray, spa: int) -> int:
    if spa % 16 or src.size % 16 or src.size != dst.size:
        raise ValueError(f"the engine works on whole 16-byte blocks (spa={spa:#x}, length={src.size})")
    return src.size // 16
