/* X25519 (RFC 7748 sections 4.1 and 5). See x25519.h.
 *
 * A field element mod p = 2^255 - 19 is five limbs of 51 bits, value = sum h[i] * 2^(51 i).
 * Every function below leaves its result "carried": limbs below 2^51 (limb 1 may exceed it by a
 * little). That bound is what keeps the 128-bit sums in fe_mul from overflowing, and fe_sub's
 * bias of 4p above every carried limb. Only fe_tobytes reduces to the canonical value. */
#include "x25519.h"

typedef unsigned __int128 u128;
typedef uint64_t fe[5];

#define MASK51 ((1ull << 51) - 1)
#define A24    121665 /* (486662 - 2) / 4, RFC 7748 section 5 */

static void fe_copy(fe out, const fe a)
{
    for (int i = 0; i < 5; i++)
        out[i] = a[i];
}

static void fe_set(fe out, uint64_t small)
{
    out[0] = small;
    for (int i = 1; i < 5; i++)
        out[i] = 0;
}

/* Carry limbs of up to 2^63 back below 2^51; the carry out of limb 4 is 2^255 = 19 mod p. */
static void fe_carry(fe h)
{
    uint64_t c;

    for (int i = 0; i < 4; i++) {
        c = h[i] >> 51;
        h[i] &= MASK51;
        h[i + 1] += c;
    }
    c = h[4] >> 51;
    h[4] &= MASK51;
    h[0] += 19 * c;
    c = h[0] >> 51;
    h[0] &= MASK51;
    h[1] += c;
}

/* The same for the 128-bit column sums of fe_mul, fe_sq and fe_mul_a24. With carried inputs a
 * column stays below 2^111 and the top one (no factor 19 in it) below 2^105, so every carry fits
 * in 64 bits, 19 times the top carry too. */
static inline void fe_carry_wide(fe out, u128 t0, u128 t1, u128 t2, u128 t3, u128 t4)
{
    uint64_t c;

    out[0] = (uint64_t)t0 & MASK51;
    t1 += (uint64_t)(t0 >> 51);
    out[1] = (uint64_t)t1 & MASK51;
    t2 += (uint64_t)(t1 >> 51);
    out[2] = (uint64_t)t2 & MASK51;
    t3 += (uint64_t)(t2 >> 51);
    out[3] = (uint64_t)t3 & MASK51;
    t4 += (uint64_t)(t3 >> 51);
    out[4] = (uint64_t)t4 & MASK51;
    out[0] += 19 * (uint64_t)(t4 >> 51);
    c = out[0] >> 51;
    out[0] &= MASK51;
    out[1] += c;
}

static void fe_add(fe out, const fe a, const fe b)
{
    for (int i = 0; i < 5; i++)
        out[i] = a[i] + b[i];
    fe_carry(out);
}

/* a - b + 4p: 4p's limbs (2^53 - 76, then 2^53 - 4) exceed any carried limb of b, so no limb
 * goes negative. */
static void fe_sub(fe out, const fe a, const fe b)
{
    out[0] = a[0] + ((1ull << 53) - 76) - b[0];
    for (int i = 1; i < 5; i++)
        out[i] = a[i] + ((1ull << 53) - 4) - b[i];
    fe_carry(out);
}

/* Schoolbook product; a limb product that overflows 2^255 comes back times 19. With carried
 * inputs every column sum stays below 2^111. */
static void fe_mul(fe out, const fe a, const fe b)
{
    uint64_t b1 = 19 * b[1], b2 = 19 * b[2], b3 = 19 * b[3], b4 = 19 * b[4];
    u128 t0, t1, t2, t3, t4;

    t0 = (u128)a[0] * b[0] + (u128)a[1] * b4 + (u128)a[2] * b3 + (u128)a[3] * b2 + (u128)a[4] * b1;
    t1 = (u128)a[0] * b[1] + (u128)a[1] * b[0] + (u128)a[2] * b4 + (u128)a[3] * b3 +
         (u128)a[4] * b2;
    t2 = (u128)a[0] * b[2] + (u128)a[1] * b[1] + (u128)a[2] * b[0] + (u128)a[3] * b4 +
         (u128)a[4] * b3;
    t3 = (u128)a[0] * b[3] + (u128)a[1] * b[2] + (u128)a[2] * b[1] + (u128)a[3] * b[0] +
         (u128)a[4] * b4;
    t4 = (u128)a[0] * b[4] + (u128)a[1] * b[3] + (u128)a[2] * b[2] + (u128)a[3] * b[1] +
         (u128)a[4] * b[0];
    fe_carry_wide(out, t0, t1, t2, t3, t4);
}

/* fe_mul(out, a, a) with the symmetric products taken once (doubled). */
static void fe_sq(fe out, const fe a)
{
    uint64_t d0 = 2 * a[0], d1 = 2 * a[1], d3 = 38 * a[3], d4 = 38 * a[4], a4_19 = 19 * a[4];
    u128 t0, t1, t2, t3, t4;

    t0 = (u128)a[0] * a[0] + (u128)d4 * a[1] + (u128)d3 * a[2];
    t1 = (u128)d0 * a[1] + (u128)d4 * a[2] + (u128)(19 * a[3]) * a[3];
    t2 = (u128)d0 * a[2] + (u128)a[1] * a[1] + (u128)d4 * a[3];
    t3 = (u128)d0 * a[3] + (u128)d1 * a[2] + (u128)a4_19 * a[4];
    t4 = (u128)d0 * a[4] + (u128)d1 * a[3] + (u128)a[2] * a[2];
    fe_carry_wide(out, t0, t1, t2, t3, t4);
}

/* out = a squared n times (n >= 1). */
static void fe_sq_n(fe out, const fe a, int n)
{
    fe_sq(out, a);
    while (--n > 0)
        fe_sq(out, out);
}

static void fe_mul_a24(fe out, const fe a)
{
    fe_carry_wide(out, (u128)a[0] * A24, (u128)a[1] * A24, (u128)a[2] * A24, (u128)a[3] * A24,
                  (u128)a[4] * A24);
}

/* Clear memory that held secret values; the asm makes the stores observable. */
static void wipe(void *p, unsigned long n)
{
    volatile uint8_t *v = p;

    while (n--)
        *v++ = 0;
    __asm__ volatile("" : : "r"(p) : "memory");
}

/* out = z^(p - 2) = 1/z (0 for z = 0), Fermat. p - 2 = 2^255 - 21 = (2^250 - 1) * 2^5 + 11;
 * the chain builds z^(2^k - 1) for k = 5, 10, 20, 40, 50, 100, 200, 250. The exponent is public,
 * so the sequence of operations does not depend on z. */
static void fe_invert(fe out, const fe z)
{
    fe z2, z9, z11, t, e5, e10, e20, e50, e100;

    fe_sq(z2, z);                 /* z^2 */
    fe_sq_n(t, z2, 2);            /* z^8 */
    fe_mul(z9, t, z);             /* z^9 */
    fe_mul(z11, z9, z2);          /* z^11 */
    fe_sq(t, z11);                /* z^22 */
    fe_mul(e5, t, z9);            /* z^31 = z^(2^5 - 1) */
    fe_sq_n(t, e5, 5);
    fe_mul(e10, t, e5);           /* z^(2^10 - 1) */
    fe_sq_n(t, e10, 10);
    fe_mul(e20, t, e10);          /* z^(2^20 - 1) */
    fe_sq_n(t, e20, 20);
    fe_mul(t, t, e20);            /* z^(2^40 - 1) */
    fe_sq_n(t, t, 10);
    fe_mul(e50, t, e10);          /* z^(2^50 - 1) */
    fe_sq_n(t, e50, 50);
    fe_mul(e100, t, e50);         /* z^(2^100 - 1) */
    fe_sq_n(t, e100, 100);
    fe_mul(t, t, e100);           /* z^(2^200 - 1) */
    fe_sq_n(t, t, 50);
    fe_mul(t, t, e50);            /* z^(2^250 - 1) */
    fe_sq_n(t, t, 5);             /* z^(2^255 - 32) */
    fe_mul(out, t, z11);          /* z^(2^255 - 21) */

    /* Powers of the ladder's z: they depend on the scalar. */
    wipe(z2, sizeof(z2));
    wipe(z9, sizeof(z9));
    wipe(z11, sizeof(z11));
    wipe(t, sizeof(t));
    wipe(e5, sizeof(e5));
    wipe(e10, sizeof(e10));
    wipe(e20, sizeof(e20));
    wipe(e50, sizeof(e50));
    wipe(e100, sizeof(e100));
}

static uint64_t load64_le(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void store64_le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* Decode a u-coordinate: bit 255 is masked off (section 5); a value in [p, 2^255) is kept as
 * it is, the arithmetic reduces it. */
static void fe_frombytes(fe h, const uint8_t s[32])
{
    uint64_t w0 = load64_le(s), w1 = load64_le(s + 8);
    uint64_t w2 = load64_le(s + 16), w3 = load64_le(s + 24);

    h[0] = w0 & MASK51;
    h[1] = (w0 >> 51 | w1 << 13) & MASK51;
    h[2] = (w1 >> 38 | w2 << 26) & MASK51;
    h[3] = (w2 >> 25 | w3 << 39) & MASK51;
    h[4] = (w3 >> 12) & MASK51;
}

/* Encode the canonical value (in [0, p)). */
static void fe_tobytes(uint8_t s[32], const fe a)
{
    fe h;
    uint64_t q;

    fe_copy(h, a);
    fe_carry(h);
    fe_carry(h); /* now every limb is below 2^51: h < 2^255 */
    /* h >= p exactly when h + 19 carries out of bit 255; then subtract p by adding 19 and
     * dropping bit 255. Branch-free: q is 0 or 1. */
    q = (h[0] + 19) >> 51;
    for (int i = 1; i < 5; i++)
        q = (h[i] + q) >> 51;
    h[0] += 19 * q;
    for (int i = 0; i < 4; i++) {
        h[i + 1] += h[i] >> 51;
        h[i] &= MASK51;
    }
    h[4] &= MASK51;
    store64_le(s, h[0] | h[1] << 51);
    store64_le(s + 8, h[1] >> 13 | h[2] << 38);
    store64_le(s + 16, h[2] >> 26 | h[3] << 25);
    store64_le(s + 24, h[3] >> 39 | h[4] << 12);
}

/* Swap a and b when bit is 1, by mask: the same loads and stores either way. The empty asm
 * keeps the compiler from turning the mask back into a branch on bit. */
static void fe_cswap(fe a, fe b, uint64_t bit)
{
    uint64_t mask = 0 - bit;

    __asm__("" : "+r"(mask));
    for (int i = 0; i < 5; i++) {
        uint64_t t = mask & (a[i] ^ b[i]);

        a[i] ^= t;
        b[i] ^= t;
    }
}

void x25519(uint8_t out[X25519_KEY_SIZE], const uint8_t scalar[X25519_KEY_SIZE],
            const uint8_t point[X25519_KEY_SIZE])
{
    uint8_t k[32];
    fe x1, x2, z2, x3, z3, a, aa, b, bb, e, c, d, da, cb;
    uint64_t swap = 0;

    /* decodeScalar25519: clear the low 3 bits and bit 255, set bit 254. */
    for (int i = 0; i < 32; i++)
        k[i] = scalar[i];
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;

    fe_frombytes(x1, point);
    fe_set(x2, 1);
    fe_set(z2, 0);
    fe_copy(x3, x1);
    fe_set(z3, 1);

    /* The ladder of section 5, one step per scalar bit from bit 254 down. */
    for (int t = 254; t >= 0; t--) {
        uint64_t kt = (k[t >> 3] >> (t & 7)) & 1;

        swap ^= kt;
        fe_cswap(x2, x3, swap);
        fe_cswap(z2, z3, swap);
        swap = kt;

        fe_add(a, x2, z2);
        fe_sq(aa, a);
        fe_sub(b, x2, z2);
        fe_sq(bb, b);
        fe_sub(e, aa, bb);
        fe_add(c, x3, z3);
        fe_sub(d, x3, z3);
        fe_mul(da, d, a);
        fe_mul(cb, c, b);
        fe_add(x3, da, cb);
        fe_sq(x3, x3);
        fe_sub(z3, da, cb);
        fe_sq(z3, z3);
        fe_mul(z3, z3, x1);
        fe_mul(x2, aa, bb);
        fe_mul_a24(z2, e);
        fe_add(z2, z2, aa);
        fe_mul(z2, z2, e);
    }
    fe_cswap(x2, x3, swap);
    fe_cswap(z2, z3, swap);

    fe_invert(z2, z2);
    fe_mul(x2, x2, z2);
    fe_tobytes(out, x2);

    /* The ladder's state and the clamped scalar determine the private key's bits. */
    wipe(k, sizeof(k));
    wipe(x2, sizeof(x2));
    wipe(z2, sizeof(z2));
    wipe(x3, sizeof(x3));
    wipe(z3, sizeof(z3));
    wipe(a, sizeof(a));
    wipe(b, sizeof(b));
    wipe(aa, sizeof(aa));
    wipe(bb, sizeof(bb));
    wipe(e, sizeof(e));
    wipe(c, sizeof(c));
    wipe(d, sizeof(d));
    wipe(da, sizeof(da));
    wipe(cb, sizeof(cb));
}

void x25519_base(uint8_t out[X25519_KEY_SIZE], const uint8_t scalar[X25519_KEY_SIZE])
{
    static const uint8_t nine[X25519_KEY_SIZE] = {9};

    x25519(out, scalar, nine);
}
