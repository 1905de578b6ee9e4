"""The guest library's X25519 (guests/lib/x25519.c), compiled natively with the guests' code
generation flags and checked against RFC 7748's published vectors and against `cryptography`."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings, strategies as st

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "guests" / "lib"
P = 2**255 - 19

# The flags of tools/build_guests.py that shape the generated code (general registers only);
# -Werror so that a warning in the library fails here too.
GUEST_CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-ffreestanding",
                "-mgeneral-regs-only", "-mno-red-zone", "-fno-stack-protector"]

# One command per line on stdin, one line of hex on stdout per command:
#   x SCALAR POINT   X25519(scalar, point)
#   b SCALAR         X25519(scalar, 9)
#   i N              RFC 7748 section 5.2's iteration: k = u = 9, N times (k, u) = (X25519(k, u), k)
HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "x25519.h"

static int unhex(const char *s, uint8_t out[32])
{
    if (strlen(s) != 64)
        return -1;
    for (int i = 0; i < 32; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    return 0;
}

static void put(const uint8_t v[32])
{
    for (int i = 0; i < 32; i++)
        printf("%02x", v[i]);
    printf("\n");
    fflush(stdout);
}

int main(void)
{
    char cmd[8], a[80], b[80];
    uint8_t k[32], u[32], r[32];

    while (scanf("%7s", cmd) == 1) {
        if (!strcmp(cmd, "x") && scanf("%79s %79s", a, b) == 2 && !unhex(a, k) && !unhex(b, u)) {
            x25519(r, k, u);
        } else if (!strcmp(cmd, "b") && scanf("%79s", a) == 1 && !unhex(a, k)) {
            x25519_base(r, k);
        } else if (!strcmp(cmd, "i") && scanf("%79s", a) == 1) {
            long n = atol(a);
            memset(k, 0, 32);
            k[0] = 9;
            memcpy(u, k, 32);
            for (long i = 0; i < n; i++) {
                x25519(r, k, u);
                memcpy(u, k, 32);
                memcpy(k, r, 32);
            }
            memcpy(r, k, 32);
        } else {
            printf("bad command\n");
            return 1;
        }
        put(r);
    }
    return 0;
}
"""


class Harness:
    def __init__(self, exe: Path):
        self.proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _ask(self, line: str) -> bytes:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert len(answer) == 64, f"harness answered {answer!r} to {line!r}"
        return bytes.fromhex(answer)

    def x25519(self, scalar: bytes, point: bytes) -> bytes:
        return self._ask(f"x {scalar.hex()} {point.hex()}")

    def base(self, scalar: bytes) -> bytes:
        return self._ask(f"b {scalar.hex()}")

    def iterate(self, n: int) -> bytes:
        return self._ask(f"i {n}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Harness:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    tmp = tmp_path_factory.mktemp("x25519")
    (tmp / "harness.c").write_text(HARNESS)
    obj, exe = tmp / "x25519.o", tmp / "harness"
    subprocess.run(["gcc", *GUEST_CFLAGS, "-c", str(LIB / "x25519.c"), "-o", str(obj)], check=True)
    subprocess.run(["gcc", "-O2", "-I", str(LIB), str(tmp / "harness.c"), str(obj), "-o", str(exe)],
                   check=True)
    h = Harness(exe)
    yield h
    h.close()


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def _reference(scalar: bytes, point: bytes) -> bytes:
    """`cryptography`'s X25519; it refuses an all-zero result (a low-order point), which RFC 7748
    defines as 32 zero bytes."""
    try:
        return X25519PrivateKey.from_private_bytes(scalar).exchange(X25519PublicKey.from_public_bytes(point))
    except ValueError:
        return bytes(32)


# -- RFC 7748 known answers (section 5.2 and 6.1) ---------------------------------------------------


@pytest.mark.parametrize("scalar, point, expected", [
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    # The RFC's second input u-coordinate has its top bit set: X25519 must ignore it.
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
], ids=["vector-1", "vector-2"])
def test_rfc7748_section_5_2_vectors(lib, scalar, point, expected):
    assert lib.x25519(_h(scalar), _h(point)).hex() == expected


@pytest.mark.parametrize("n, expected", [
    (1, "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"),
    (1000, "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"),
])
def test_rfc7748_section_5_2_iterations(lib, n, expected):
    assert lib.iterate(n).hex() == expected


def test_rfc7748_section_6_1_diffie_hellman(lib):
    alice_priv = _h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    alice_pub = _h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    bob_priv = _h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    bob_pub = _h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = _h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert lib.base(alice_priv) == alice_pub
    assert lib.base(bob_priv) == bob_pub
    assert lib.x25519(alice_priv, bob_pub) == shared
    assert lib.x25519(bob_priv, alice_pub) == shared


# -- edge cases of the encoding (RFC 7748 section 5) -------------------------------------------------


def test_scalar_is_clamped(lib):
    """Bits 0-2 and 255 of the scalar are cleared and bit 254 set before the ladder runs."""
    rng = random.Random(7748)
    point = _h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    for _ in range(8):
        k = bytearray(rng.randbytes(32))
        clamped = bytearray(k)
        clamped[0] &= 248
        clamped[31] = (clamped[31] & 127) | 64
        k[0] |= 7
        k[31] ^= 0xC0
        assert lib.x25519(bytes(k), point) == lib.x25519(bytes(clamped), point) == _reference(bytes(k), point)


def test_u_coordinate_top_bit_and_non_canonical_values(lib):
    """The top bit is masked; values in [p, 2^255) are the same field elements as value - p."""
    scalar = _h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    for u in (0, 1, 9, P - 1, 2**254 + 12345):
        plain = lib.x25519(scalar, u.to_bytes(32, "little"))
        assert lib.x25519(scalar, (u | 1 << 255).to_bytes(32, "little")) == plain
        if u + P < 2**255:
            assert lib.x25519(scalar, (u + P).to_bytes(32, "little")) == plain
        assert plain == _reference(scalar, u.to_bytes(32, "little"))
    # u = 0 (order 2), 1 and -1 (order 4, on the curve or its twist) are of low order: a clamped
    # scalar is a multiple of 8, so the result is zero (what the secret release refuses).
    for u in (0, 1, P - 1):
        assert lib.x25519(scalar, u.to_bytes(32, "little")) == bytes(32)


def test_output_is_canonical(lib):
    """Every output is the reduced value, below p."""
    rng = random.Random(25519)
    for _ in range(64):
        out = lib.x25519(rng.randbytes(32), rng.randbytes(32))
        assert int.from_bytes(out, "little") < P


# -- against cryptography --------------------------------------------------------------------------


def test_random_scalars_and_curve_points_match_cryptography(lib):
    """Scenario: the secret release's two computations, key pair and shared secret, on 300 random
    key pairs agree with an independent implementation."""
    rng = random.Random(0x5EC7E7)
    for _ in range(300):
        a, b = rng.randbytes(32), rng.randbytes(32)
        a_pub = X25519PrivateKey.from_private_bytes(a).public_key().public_bytes_raw()
        b_pub = X25519PrivateKey.from_private_bytes(b).public_key().public_bytes_raw()
        assert lib.base(a) == a_pub
        shared = lib.x25519(a, b_pub)
        assert shared == _reference(a, b_pub) == lib.x25519(b, a_pub)


@settings(max_examples=300, deadline=None)
@given(scalar=st.binary(min_size=32, max_size=32), point=st.binary(min_size=32, max_size=32))
def test_arbitrary_inputs_match_cryptography(lib, scalar, point):
    """Any 32-byte strings: points off the curve (on the twist), non-canonical and top-bit-set
    u-coordinates included."""
    assert lib.x25519(scalar, point) == _reference(scalar, point)
