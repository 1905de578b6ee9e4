/* X25519 (RFC 7748): Diffie-Hellman on Curve25519, u-coordinates only.
 *
 * Used for the SEV-SNP secret release: the guest makes an ephemeral key pair, binds the public
 * key into its attestation report and the owner encrypts the secret to it (docs/guest-abi.md).
 * The Montgomery ladder runs the same instructions and touches the same memory for every
 * scalar (swaps by mask, no secret-dependent branch or index). General-purpose registers only:
 * field elements are five 51-bit limbs with 128-bit products. */
#ifndef HV_GUEST_X25519_H
#define HV_GUEST_X25519_H

#include <stdint.h>

#define X25519_KEY_SIZE 32

/* out = scalar * point. The scalar is clamped as RFC 7748 section 5 says (the caller passes
 * 32 random bytes as a private key); the point's top bit is ignored and a non-canonical
 * u-coordinate is reduced. out may alias either input. */
void x25519(uint8_t out[X25519_KEY_SIZE], const uint8_t scalar[X25519_KEY_SIZE],
            const uint8_t point[X25519_KEY_SIZE]);

/* out = scalar * 9, the public key of the private key `scalar`. */
void x25519_base(uint8_t out[X25519_KEY_SIZE], const uint8_t scalar[X25519_KEY_SIZE]);

#endif
