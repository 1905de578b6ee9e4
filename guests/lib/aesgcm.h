/* AES-256-GCM, as the SNP guest-message protocol uses it (VMPCK key, 96-bit IV, tag 16 bytes).
 *
 * Small and table-free (the S-box is computed once), general-purpose registers only: it protects
 * a few messages, never bulk data, so speed does not matter but a constant-size footprint does. */
#ifndef HV_GUEST_AESGCM_H
#define HV_GUEST_AESGCM_H

#include <stddef.h>
#include <stdint.h>

#define AESGCM_KEY_SIZE 32
#define AESGCM_IV_SIZE  12
#define AESGCM_TAG_SIZE 16

/* Encrypt `len` bytes of `in` to `out` (may be the same buffer) and compute the tag over
 * `aad` and the ciphertext. */
void aesgcm_seal(const uint8_t key[AESGCM_KEY_SIZE], const uint8_t iv[AESGCM_IV_SIZE],
                 const uint8_t *aad, size_t aad_len, const uint8_t *in, uint8_t *out, size_t len,
                 uint8_t tag[AESGCM_TAG_SIZE]);

/* Check `tag` over `aad` and the ciphertext `in`, then decrypt to `out`. Returns 0 when the tag
 * verifies, -1 otherwise (and then `out` is left untouched). */
int aesgcm_open(const uint8_t key[AESGCM_KEY_SIZE], const uint8_t iv[AESGCM_IV_SIZE],
                const uint8_t *aad, size_t aad_len, const uint8_t *in, uint8_t *out, size_t len,
                const uint8_t tag[AESGCM_TAG_SIZE]);

#endif
