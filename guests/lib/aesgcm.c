/* AES-256 (FIPS 197) in GCM (SP 800-38D) with a 96-bit IV. See aesgcm.h. */
#include "aesgcm.h"

#include "mem.h"

#define AES_ROUNDS 14

static uint8_t sbox[256];
static int sbox_ready;

static uint8_t gf_mul(uint8_t a, uint8_t b)
{
    uint8_t r = 0;

    while (b) {
        if (b & 1)
            r ^= a;
        a = (uint8_t)((a << 1) ^ ((a & 0x80) ? 0x1b : 0));
        b >>= 1;
    }
    return r;
}

static uint8_t rotl8(uint8_t x, int n)
{
    return (uint8_t)((x << n) | (x >> (8 - n)));
}

/* The S-box from its definition: the multiplicative inverse in GF(2^8), then the affine map. */
static void sbox_init(void)
{
    for (int x = 0; x < 256; x++) {
        uint8_t inv = 0;

        if (x) {
            uint8_t p = (uint8_t)x;  /* x^254 = x^-1 */
            inv = 1;
            for (int i = 0; i < 254; i++)
                inv = gf_mul(inv, p);
        }
        sbox[x] = (uint8_t)(inv ^ rotl8(inv, 1) ^ rotl8(inv, 2) ^ rotl8(inv, 3) ^ rotl8(inv, 4) ^ 0x63);
    }
    sbox_ready = 1;
}

struct aes256 {
    uint8_t rk[(AES_ROUNDS + 1) * 16];
};

static void aes256_init(struct aes256 *ctx, const uint8_t key[32])
{
    uint8_t rcon = 1;

    if (!sbox_ready)
        sbox_init();
    memcpy(ctx->rk, key, 32);
    for (int i = 8; i < 4 * (AES_ROUNDS + 1); i++) {
        uint8_t t[4];

        memcpy(t, &ctx->rk[4 * (i - 1)], 4);
        if (i % 8 == 0) {
            uint8_t first = t[0];

            t[0] = (uint8_t)(sbox[t[1]] ^ rcon);
            t[1] = sbox[t[2]];
            t[2] = sbox[t[3]];
            t[3] = sbox[first];
            rcon = gf_mul(rcon, 2);
        } else if (i % 8 == 4) {
            for (int j = 0; j < 4; j++)
                t[j] = sbox[t[j]];
        }
        for (int j = 0; j < 4; j++)
            ctx->rk[4 * i + j] = (uint8_t)(ctx->rk[4 * (i - 8) + j] ^ t[j]);
    }
}

static void aes256_encrypt(const struct aes256 *ctx, const uint8_t in[16], uint8_t out[16])
{
    uint8_t s[16], t[16];

    for (int i = 0; i < 16; i++)
        s[i] = (uint8_t)(in[i] ^ ctx->rk[i]);
    for (int round = 1; round <= AES_ROUNDS; round++) {
        /* SubBytes and ShiftRows: byte (row r, column c) comes from column c + r. */
        for (int c = 0; c < 4; c++)
            for (int r = 0; r < 4; r++)
                t[r + 4 * c] = sbox[s[r + 4 * ((c + r) % 4)]];
        if (round != AES_ROUNDS) {
            for (int c = 0; c < 4; c++) {
                uint8_t a0 = t[4 * c], a1 = t[4 * c + 1], a2 = t[4 * c + 2], a3 = t[4 * c + 3];

                t[4 * c] = (uint8_t)(gf_mul(a0, 2) ^ gf_mul(a1, 3) ^ a2 ^ a3);
                t[4 * c + 1] = (uint8_t)(a0 ^ gf_mul(a1, 2) ^ gf_mul(a2, 3) ^ a3);
                t[4 * c + 2] = (uint8_t)(a0 ^ a1 ^ gf_mul(a2, 2) ^ gf_mul(a3, 3));
                t[4 * c + 3] = (uint8_t)(gf_mul(a0, 3) ^ a1 ^ a2 ^ gf_mul(a3, 2));
            }
        }
        for (int i = 0; i < 16; i++)
            s[i] = (uint8_t)(t[i] ^ ctx->rk[16 * round + i]);
    }
    memcpy(out, s, 16);
}

/* X = X * H in GF(2^128), GCM's bit order (the first bit of the block is the x^0 coefficient). */
static void gf128_mul(uint8_t x[16], const uint8_t h[16])
{
    uint8_t z[16] = {0}, v[16];

    memcpy(v, h, 16);
    for (int i = 0; i < 128; i++) {
        if (x[i / 8] & (0x80 >> (i % 8)))
            for (int j = 0; j < 16; j++)
                z[j] ^= v[j];
        int lsb = v[15] & 1;

        for (int j = 15; j > 0; j--)
            v[j] = (uint8_t)((v[j] >> 1) | (v[j - 1] << 7));
        v[0] >>= 1;
        if (lsb)
            v[0] ^= 0xe1;
    }
    memcpy(x, z, 16);
}

static void ghash_update(uint8_t y[16], const uint8_t h[16], const uint8_t *data, size_t len)
{
    while (len) {
        size_t n = len < 16 ? len : 16;

        for (size_t i = 0; i < n; i++)
            y[i] ^= data[i];
        gf128_mul(y, h);
        data += n;
        len -= n;
    }
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* The CTR pass (counter blocks from inc32(J0)) and the tag over aad and ciphertext. */
static void gcm(const uint8_t key[32], const uint8_t iv[12], const uint8_t *aad, size_t aad_len,
                const uint8_t *in, uint8_t *out, size_t len, int encrypting, uint8_t tag[16])
{
    struct aes256 ctx;
    uint8_t h[16] = {0}, j0[16], y[16] = {0}, lens[16], ctr[16], ks[16];

    aes256_init(&ctx, key);
    aes256_encrypt(&ctx, h, h);
    memcpy(j0, iv, 12);
    j0[12] = j0[13] = j0[14] = 0;
    j0[15] = 1;
    ghash_update(y, h, aad, aad_len);
    if (!encrypting)
        ghash_update(y, h, in, len);
    memcpy(ctr, j0, 16);
    for (size_t off = 0; out && off < len; off += 16) {
        for (int i = 15; i >= 12; i--)
            if (++ctr[i])
                break;
        aes256_encrypt(&ctx, ctr, ks);
        for (size_t i = 0; i < 16 && off + i < len; i++)
            out[off + i] = (uint8_t)(in[off + i] ^ ks[i]);
    }
    if (encrypting)
        ghash_update(y, h, out, len);
    put_be64(lens, (uint64_t)aad_len * 8);
    put_be64(lens + 8, (uint64_t)len * 8);
    ghash_update(y, h, lens, 16);
    aes256_encrypt(&ctx, j0, ks);
    for (int i = 0; i < 16; i++)
        tag[i] = (uint8_t)(ks[i] ^ y[i]);
    memset(&ctx, 0, sizeof(ctx));
}

void aesgcm_seal(const uint8_t key[AESGCM_KEY_SIZE], const uint8_t iv[AESGCM_IV_SIZE],
                 const uint8_t *aad, size_t aad_len, const uint8_t *in, uint8_t *out, size_t len,
                 uint8_t tag[AESGCM_TAG_SIZE])
{
    gcm(key, iv, aad, aad_len, in, out, len, 1, tag);
}

int aesgcm_open(const uint8_t key[AESGCM_KEY_SIZE], const uint8_t iv[AESGCM_IV_SIZE],
                const uint8_t *aad, size_t aad_len, const uint8_t *in, uint8_t *out, size_t len,
                const uint8_t tag[AESGCM_TAG_SIZE])
{
    uint8_t expected[16], diff = 0;

    gcm(key, iv, aad, aad_len, in, 0, len, 0, expected);
    for (int i = 0; i < 16; i++)
        diff |= (uint8_t)(expected[i] ^ tag[i]);
    if (diff)
        return -1;
    gcm(key, iv, aad, aad_len, in, out, len, 0, expected);
    return 0;
}
