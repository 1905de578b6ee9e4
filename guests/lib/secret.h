/* The guest's secret, however the guest owner delivers it (docs/guest-abi.md).
 *
 * Plain, SEV and SEV-ES: the launch secret, secret_len bytes at GPA 0x9000 (injected by
 * LAUNCH_SECRET under SEV, written by hv in a plain guest). SEV-SNP has no launch secret: when the
 * boot information's flags bit 0 says an owner is standing by, the guest asks for a release.
 * It makes an ephemeral X25519 key pair from RDRAND, binds the public key into an attestation
 * report (report_data = key || 32 zero bytes), hands the report to the hypervisor in two shared
 * pages (port 0x502) and decrypts what the owner sent back:
 *
 *   shared = X25519(guest_private, owner_public)      (all zeros is refused)
 *   key    = SHA-256("hv-secret-release-v1" || shared || guest_public || owner_public)
 *   secret = AES-256-GCM-open(key, iv, no AAD, ciphertext, tag)
 *
 * The hypervisor carries the exchange: it may drop or garble the answer or forge a refusal, but
 * it cannot read or choose the secret. The guest copies the answer once into private memory and
 * looks only at that copy; the private key and the derived key are wiped after use. */
#ifndef HV_GUEST_SECRET_H
#define HV_GUEST_SECRET_H

#include <stddef.h>
#include <stdint.h>

#include "bootinfo.h"

/* Results of hv_secret. Negative: a secret was offered but the guest does not have it. */
#define HV_SECRET_NONE       0   /* nothing offered: the caller uses its built-in secret */
#define HV_SECRET_OK         1   /* *secret and *len hold the secret */
#define HV_SECRET_BAD_GPA    (-1) /* the boot information names a secret page other than 0x9000 */
#define HV_SECRET_REFUSED    (-2) /* a refusal from the owner (or one the hypervisor forged) */
#define HV_SECRET_GARBLED    (-3) /* no answer, or one that is malformed or does not authenticate */
#define HV_SECRET_NO_RDRAND  (-4) /* RDRAND gave no random number */
#define HV_SECRET_NO_REPORT  (-5) /* the PSP's attestation report could not be had */
#define HV_SECRET_NO_PAGES   (-6) /* no shared pages for the exchange */
#define HV_SECRET_BOOT_INFO  (-7) /* the boot information claims a launch secret under SEV-SNP */

/* The guest's secret. `info` is the guest's private copy of the boot information page
 * (boot_info_read), already checked with boot_info_valid.
 *
 *   plain, SEV, SEV-ES: secret_len > 0 gives the launch secret at 0x9000 (at most 4096 bytes;
 *     *secret points at the secret page), HV_SECRET_BAD_GPA when secret_gpa is not 0x9000,
 *     HV_SECRET_NONE when secret_len is 0. The flags are ignored: without SNP there is no report
 *     to release a secret to.
 *   SEV-SNP: flags bit 0 runs the release; HV_SECRET_OK leaves the secret (1..4096 bytes) in a
 *     private static buffer of the library. Without bit 0: HV_SECRET_NONE. secret_len > 0 is
 *     refused (HV_SECRET_BOOT_INFO): 0x9000 is the PSP's secrets page, not a secret to hand out.
 *
 * Call it once: under SEV-SNP every call takes two more pages of the shared pool and another
 * report, and after a failed report request the report key is gone (snp_get_report). */
int hv_secret(const struct hv_boot_info *info, const uint8_t **secret, size_t *len);

/* One line (no newline) saying why the last hv_secret call gave what it gave; a refusal
 * carries the owner's reason, made printable. */
const char *hv_secret_reason(void);

#endif
