"""Known answers for the memory encryption engine, computed with single-block AES straight from
`cryptography` and tweaks computed here from the constants, independently of the engine."""

import os
import random

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hv.hw import engine as engine_module
from hv.hw.engine import TWEAK_BITS, AesEngine, KeySlotPort, TweakMode
from hv.hw.errors import AsidError, KeySlotError
from hv.hw.memctl import MemoryController

KEY = bytes(range(16))
# EPYC 7251 values from the SEVurity paper for t4..t6, the rest arbitrary 32-bit patterns.
CONSTANTS = [0, 0, 0, 0, 0x82253838, 0xEC09079C, 0x40000018] + [
    (0x9E3779B9 * i) & 0xFFFFFFFF for i in range(7, TWEAK_BITS)]


def aes(block: bytes) -> bytes:
    return Cipher(algorithms.AES(KEY), modes.ECB()).encryptor().update(block)


def linear_tweak(p: int) -> bytes:
    t = 0
    for i in range(4, TWEAK_BITS):
        if p >> i & 1:
            t ^= CONSTANTS[i]
    return t.to_bytes(4, "little") * 4


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def engine(mode: TweakMode, rng=os.urandom) -> AesEngine:
    e = AesEngine(15, mode, CONSTANTS, rng=rng)
    KeySlotPort(e).program_key(7, KEY)
    return e


@pytest.mark.parametrize("spa", [0x0, 0x10, 0x1230, 0x7FFFF0, 0x12345670, 0xABCDEF0000])
def test_xe_linear_known_answer(spa):
    e = engine(TweakMode.XE_LINEAR)
    p = bytes.fromhex("00112233445566778899aabbccddeeff")
    expected = aes(xor(p, linear_tweak(spa)))
    assert bytes(e.encrypt(7, spa, p)) == expected
    assert bytes(e.decrypt(7, spa, expected)) == p


@pytest.mark.parametrize("spa", [0x0, 0x20, 0x4560, 0x7FFFF0, 0x12345670])
def test_xex_linear_known_answer(spa):
    e = engine(TweakMode.XEX_LINEAR)
    p = b"sixteen byte msg"
    t = linear_tweak(spa)
    expected = xor(aes(xor(p, t)), t)
    assert bytes(e.encrypt(7, spa, p)) == expected


def test_xex_random_known_answer_with_seeded_boot():
    # The engine draws, in order: the SME key, the linear constants (unused here), the tweak key.
    stream = [b"H" * 16, b"T" * 16]
    e = AesEngine(15, TweakMode.XEX_RANDOM, CONSTANTS, rng=lambda n: stream.pop(0)[:n])
    KeySlotPort(e).program_key(7, KEY)
    spa = 0x2340
    t = Cipher(algorithms.AES(b"T" * 16), modes.ECB()).encryptor().update((spa >> 4).to_bytes(16, "big"))
    p = os.urandom(16)
    assert bytes(e.encrypt(7, spa, p)) == xor(aes(xor(p, t)), t)


def test_multi_block_request_equals_single_blocks():
    for mode in TweakMode:
        e = engine(mode)
        data = os.urandom(3 * 4096 + 64)
        whole = bytes(e.encrypt(7, 0x3000, data))
        parts = b"".join(bytes(e.encrypt(7, 0x3000 + i, data[i:i + 16])) for i in range(0, len(data), 16))
        assert whole == parts


def test_moved_block_xe_decrypts_to_p_xor_tp_xor_tq():
    """SEVurity's relation: under XE a block copied from p to q reads back P ^ T(p) ^ T(q)."""
    e = engine(TweakMode.XE_LINEAR)
    p_addr, q_addr = 0x5430, 0x9870
    plain = b"attacker-chosen!"
    c = bytes(e.encrypt(7, p_addr, plain))
    moved = bytes(e.decrypt(7, q_addr, c))
    assert moved == xor(xor(plain, linear_tweak(p_addr)), linear_tweak(q_addr))


def test_moved_block_xex_needs_tweak_difference():
    """Under XEX a raw copy is garbage, but C ^ T(p) ^ T(q) reads back P ^ T(p) ^ T(q)."""
    e = engine(TweakMode.XEX_LINEAR)
    p_addr, q_addr = 0x5430, 0x9870
    plain = b"attacker-chosen!"
    c = bytes(e.encrypt(7, p_addr, plain))
    delta = xor(linear_tweak(p_addr), linear_tweak(q_addr))
    assert bytes(e.decrypt(7, q_addr, c)) != xor(plain, delta)
    assert bytes(e.decrypt(7, q_addr, xor(c, delta))) == xor(plain, delta)


def test_tweak_constants_are_shared_by_every_key():
    e = engine(TweakMode.XEX_LINEAR)
    KeySlotPort(e).program_key(9, b"another key 9999")
    assert e.tweak_constants()[4:] == CONSTANTS[4:]


def test_deterministic_per_key_address_plaintext():
    e = engine(TweakMode.XEX_RANDOM)
    KeySlotPort(e).program_key(8, b"k8" * 8)
    p = b"\0" * 16
    assert bytes(e.encrypt(7, 0x100, p)) == bytes(e.encrypt(7, 0x100, p))
    assert bytes(e.encrypt(7, 0x100, p)) != bytes(e.encrypt(7, 0x110, p))
    assert bytes(e.encrypt(7, 0x100, p)) != bytes(e.encrypt(8, 0x100, p))


def test_bad_inputs_are_typed_errors():
    e = engine(TweakMode.XEX_RANDOM)
    with pytest.raises(KeySlotError, match="holds no key"):
        e.encrypt(3, 0, bytes(16))
    with pytest.raises(ValueError, match="16-byte blocks"):
        e.encrypt(7, 8, bytes(16))
    with pytest.raises(ValueError, match="16-byte blocks"):
        e.encrypt(7, 0, bytes(15))
    slots = KeySlotPort(e)
    with pytest.raises(AsidError, match="outside 1..15"):
        slots.program_key(16, bytes(16))
    with pytest.raises(AsidError):
        slots.program_key(0, bytes(16))  # slot 0 is the host's SME key: not the PSP's to set
    with pytest.raises(ValueError, match="16-byte keys"):
        slots.program_key(3, bytes(32))


def test_no_interface_returns_a_key():
    e = engine(TweakMode.XEX_RANDOM)
    port = KeySlotPort(e)
    assert [n for n in dir(port) if not n.startswith("_")] == ["clear_key", "program_key"]
    assert port.program_key(3, bytes(16)) is None
    assert not any("key" in n and not n.startswith("_") and n != "has_key" for n in dir(e))


def test_bulk_in_place_buffers():
    e = engine(TweakMode.XEX_RANDOM)
    src = np.frombuffer(os.urandom(1 << 20), dtype=np.uint8)
    dst = np.empty_like(src)
    back = np.empty_like(src)
    e.encrypt_into(7, 1 << 20, src, dst)
    e.decrypt_into(7, 1 << 20, dst, back)
    assert np.array_equal(src, back) and not np.array_equal(src, dst)


def test_requests_larger_than_a_chunk_match_block_by_block():
    """Bulk requests are processed in chunks; the seams must not show."""
    for mode in TweakMode:
        e = engine(mode)
        data = os.urandom((3 << 20) + 4096)
        spa = 0x7FF000
        whole = bytes(e.encrypt(7, spa, data))
        for off in (0, (1 << 20) - 16, 1 << 20, (2 << 20) + 16, len(data) - 16):
            assert whole[off:off + 16] == bytes(e.encrypt(7, spa + off, data[off:off + 16]))
        assert bytes(e.decrypt(7, spa, whole)) == data


# -- the tweak cache: T of a page is computed once per boot and kept ---------------------------

DRAM = 64 << 20


def seeded(mode: TweakMode, tweak_key: bytes, **kw) -> AesEngine:
    """An engine whose power-on draws are known: the SME key, then the tweak key."""
    stream = [b"S" * 16, tweak_key]
    e = AesEngine(15, mode, CONSTANTS, rng=lambda n: stream.pop(0)[:n], **kw)
    KeySlotPort(e).program_key(7, KEY)
    return e


def random_tweaks(tweak_key: bytes, spa: int, nbytes: int) -> bytes:
    """AES_kt(p >> 4) for every block of [spa, spa + nbytes), one ECB block per index."""
    idx = b"".join(((spa >> 4) + i).to_bytes(16, "big") for i in range(nbytes // 16))
    return Cipher(algorithms.AES(tweak_key), modes.ECB()).encryptor().update(idx)


def xex(plain: bytes, tweak: bytes) -> bytes:
    """C = AES_K(P ^ T) ^ T over whole blocks, from single-key ECB and byte XORs."""
    return xor(aes_many(xor(plain, tweak)), tweak)


def aes_many(data: bytes) -> bytes:
    return Cipher(algorithms.AES(KEY), modes.ECB()).encryptor().update(data)


def edge_and_random_pages(seed: int, count: int = 12) -> list[int]:
    rnd = random.Random(seed)
    return [0, DRAM - 4096] + [rnd.randrange(DRAM // 4096) * 4096 for _ in range(count)]


@pytest.mark.parametrize("tweak_key", [b"T" * 16, bytes(range(16, 32))])
def test_cached_random_tweak_is_aes_of_the_block_index(tweak_key):
    """Every page's cached T, first computed and then read back from the cache, is AES_kt(p >> 4),
    also for ranges that start inside a page and cross into the next one."""
    e = seeded(TweakMode.XEX_RANDOM, tweak_key)
    rnd = random.Random(tweak_key)
    spans = [(p, 4096) for p in edge_and_random_pages(tweak_key[0])]
    spans += [(rnd.randrange(DRAM // 16 - 512) * 16, rnd.randrange(1, 512) * 16) for _ in range(8)]
    spans.append(((2 << 20) - 64, 64))  # the last blocks of a 2 MiB region
    for _ in range(2):
        for spa, n in spans:
            region_room = (2 << 20) - spa % (2 << 20)
            n = min(n, region_room)
            assert e._tweak(spa, n).tobytes() == random_tweaks(tweak_key, spa, n), hex(spa)


def test_each_boot_has_its_own_tweak():
    """A new tweak key at power-on: the new engine's T follows it, nothing carries over."""
    first = seeded(TweakMode.XEX_RANDOM, b"A" * 16)
    second = seeded(TweakMode.XEX_RANDOM, b"B" * 16)
    p = bytes(range(256)) * 16
    for spa in (0, 0x5000, DRAM - 4096):
        a, b = bytes(first.encrypt(7, spa, p)), bytes(second.encrypt(7, spa, p))
        assert a == xex(p, random_tweaks(b"A" * 16, spa, 4096))
        assert b == xex(p, random_tweaks(b"B" * 16, spa, 4096))


def test_first_and_last_page_of_dram_through_the_memory_controller():
    """What DRAM holds after an encrypted write is XEX with T = AES_kt(p >> 4), at both ends of
    DRAM and at random pages, on the first write of a page and on a later one (from the cache)."""
    e = seeded(TweakMode.XEX_RANDOM, b"K" * 16)
    mc = MemoryController(DRAM, e)
    for spa in edge_and_random_pages(7):
        for _ in range(2):
            plain = os.urandom(4096)
            mc.write(spa, plain, slot=7)
            assert mc.read(spa, 4096) == xex(plain, random_tweaks(b"K" * 16, spa, 4096)), hex(spa)
            assert mc.read(spa, 4096, slot=7) == plain


@pytest.mark.parametrize("mode", list(TweakMode))
def test_the_tweak_of_a_page_is_computed_once(mode, monkeypatch):
    """Moving the same page again reuses its tweak: no AES-CTR pass (random mode) and no
    linear-tweak computation after the first move."""
    e = engine(mode)
    ctr_passes, linear_calls = [], []
    real_cipher, real_tweaks = engine_module.Cipher, e._tweaks

    def counting_cipher(algorithm, mode_, *args, **kwargs):
        if isinstance(mode_, modes.CTR):
            ctr_passes.append(mode_)
        return real_cipher(algorithm, mode_, *args, **kwargs)

    def counting_tweaks(*args):
        linear_calls.append(args)
        return real_tweaks(*args)

    monkeypatch.setattr(engine_module, "Cipher", counting_cipher)
    monkeypatch.setattr(e, "_tweaks", counting_tweaks)
    page = np.frombuffer(os.urandom(4096), dtype=np.uint8)
    out, back = np.empty_like(page), np.empty_like(page)
    for _ in range(10):
        e.encrypt_into(7, 0x123000, page, out)
        e.decrypt_into(7, 0x123000, out, back)
    assert np.array_equal(page, back)
    assert len(ctr_passes) + len(linear_calls) == 1


def test_the_tweak_cache_is_bounded_and_survives_eviction():
    """With room for two 2 MiB regions, touching five keeps two, and an evicted page's tweak is
    computed again to the same value."""
    e = seeded(TweakMode.XEX_RANDOM, b"E" * 16, tweak_cache_bytes=4 << 20)
    p = os.urandom(4096)
    first = bytes(e.encrypt(7, 0x1000, p))
    for region in range(1, 5):
        e.encrypt(7, (region << 21) + 0x1000, p)
        assert e.tweak_cache_used() <= 2 * ((2 << 20) + 16)
    assert bytes(e.encrypt(7, 0x1000, p)) == first == xex(p, random_tweaks(b"E" * 16, 0x1000, 4096))
    with pytest.raises(ValueError, match="tweak cache"):
        AesEngine(15, tweak_cache_bytes=4096)


def test_requests_across_regions_in_every_mode_match_single_pages():
    """A request that starts mid-region and crosses two region boundaries, with a cold cache and
    a warm one, equals page-by-page requests on a separate engine (same power-on draws)."""
    for mode in TweakMode:
        bulk, single = seeded(mode, b"R" * 16), seeded(mode, b"R" * 16)
        spa, data = (2 << 20) - 0x3000, os.urandom((2 << 20) + 0x5000)
        for _ in range(2):
            whole = bytes(bulk.encrypt(7, spa, data))
            parts = b"".join(bytes(single.encrypt(7, spa + i, data[i:i + 4096]))
                             for i in range(0, len(data), 4096))
            assert whole == parts
            assert bytes(bulk.decrypt(7, spa, whole)) == data
