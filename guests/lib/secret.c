/* The launch secret, or the SEV-SNP secret release. See secret.h and docs/guest-abi.md. */
#include "secret.h"

#include <stdarg.h>

#include "aesgcm.h"
#include "mem.h"
#include "paging.h"
#include "printf.h"
#include "sev.h"
#include "sha256.h"
#include "snp_guest.h"
#include "x25519.h"
#include "x86.h"

/* The request/response block: two shared pages at the GPA written to port 0x502. */
#define HV_PORT_SECRET_RELEASE 0x502
#define SR_PAGES               2
#define SR_MAGIC               0x52535648u /* "HVSR" */
#define SR_VERSION             1u
#define SR_STATUS_PENDING      0xffffffffu /* what the guest writes: still there = no answer */
#define SR_STATUS_RELEASED     0
#define SR_STATUS_REFUSED      1
#define SR_STATUS_NO_SECRET    2
#define SR_STATUS_MALFORMED    3
#define SR_OFF_MAGIC           0x000
#define SR_OFF_VERSION         0x004
#define SR_OFF_STATUS          0x008
#define SR_OFF_SECRET_LEN      0x00c
#define SR_OFF_OWNER_PUB       0x010
#define SR_OFF_IV              0x030
#define SR_OFF_TAG             0x040
#define SR_OFF_REASON          0x100
#define SR_REASON_SIZE         256
#define SR_OFF_REPORT          0x200
#define SR_OFF_CIPHERTEXT      0x1000
#define SR_KDF_LABEL           "hv-secret-release-v1" /* the 20 bytes, no NUL */

/* Intel's guidance for RDRAND: a few retries cover a transient underflow. */
#define RDRAND_RETRIES 10

static uint8_t released[HV_SECRET_MAX];      /* the decrypted secret: private .bss */
static uint8_t answer[SR_PAGES * PAGE_SIZE]; /* the one private copy of the response */
static char reason[SR_REASON_SIZE + 96];

static int result(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int result(int code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    return code;
}

const char *hv_secret_reason(void)
{
    return reason[0] ? reason : "hv_secret was not called";
}

/* memset, then an asm that claims to read the buffer: the stores cannot be dropped as dead. */
static void wipe(void *p, size_t n)
{
    memset(p, 0, n);
    __asm__ volatile("" : : "r"(p) : "memory");
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v;

    memcpy(&v, p, sizeof(v));
    return v;
}

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, sizeof(v));
}

/* CF = 1: a random number. CF = 0: none available yet, try again. All ones with CF = 1 is what
 * some AMD parts return after a failed resume; take that as a failure too. RDRAND is not
 * intercepted, so the hypervisor does not see or choose the value; CPUID (which it does answer)
 * is not consulted: without RDRAND the instruction faults and the guest stops. */
static int rdrand64(uint64_t *out)
{
    for (int i = 0; i < RDRAND_RETRIES; i++) {
        uint64_t v;
        uint8_t ok;

        __asm__ volatile("rdrand %0; setc %1" : "=r"(v), "=qm"(ok) : : "cc");
        if (ok && v != ~0ull) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* The owner's reason from the private copy: at most 255 bytes, stopped at the NUL, anything
 * but printable ASCII replaced so that it stays one line. */
static void copy_reason(char *out, const uint8_t *in)
{
    size_t i;

    for (i = 0; i < SR_REASON_SIZE - 1 && in[i]; i++)
        out[i] = in[i] >= 0x20 && in[i] < 0x7f ? (char)in[i] : '?';
    out[i] = 0;
}

static int refused(uint32_t status, const uint8_t *owner_reason)
{
    char why[SR_REASON_SIZE];
    const char *what = status == SR_STATUS_REFUSED   ? "the owner refused"
                       : status == SR_STATUS_NO_SECRET ? "the owner has no secret to release"
                                                       : "the owner calls the request malformed";

    copy_reason(why, owner_reason);
    return result(HV_SECRET_REFUSED, "%s: %s", what, why[0] ? why : "(no reason given)");
}

/* Check the private copy of the answer and decrypt it with the guest's private key. */
static int open_answer(const uint8_t priv[X25519_KEY_SIZE], const uint8_t pub[X25519_KEY_SIZE],
                       const uint8_t **secret, size_t *len)
{
    uint32_t status = get32(answer + SR_OFF_STATUS), slen = get32(answer + SR_OFF_SECRET_LEN);
    const uint8_t *owner_pub = answer + SR_OFF_OWNER_PUB;
    uint8_t shared[X25519_KEY_SIZE], key[SHA256_DIGEST_SIZE], any = 0;
    struct sha256_ctx ctx;
    int rc;

    if (get32(answer + SR_OFF_MAGIC) != SR_MAGIC || get32(answer + SR_OFF_VERSION) != SR_VERSION)
        return result(HV_SECRET_GARBLED, "the answer's magic or version is wrong");
    if (status == SR_STATUS_PENDING)
        return result(HV_SECRET_GARBLED, "the request came back unanswered");
    if (status == SR_STATUS_REFUSED || status == SR_STATUS_NO_SECRET ||
        status == SR_STATUS_MALFORMED)
        return refused(status, answer + SR_OFF_REASON);
    if (status != SR_STATUS_RELEASED)
        return result(HV_SECRET_GARBLED, "the answer has an unknown status %u", status);
    if (slen == 0 || slen > HV_SECRET_MAX)
        return result(HV_SECRET_GARBLED, "the answer's secret_len %u is not 1..%u", slen,
                      HV_SECRET_MAX);

    /* A low-order owner key makes the shared secret zero whatever the guest's key: the
     * hypervisor would know the key, so such an answer is not the owner's. */
    x25519(shared, priv, owner_pub);
    for (int i = 0; i < X25519_KEY_SIZE; i++)
        any |= shared[i];
    if (!any)
        return result(HV_SECRET_GARBLED, "the owner's key gives an all-zero shared secret");

    sha256_init(&ctx);
    sha256_update(&ctx, SR_KDF_LABEL, sizeof(SR_KDF_LABEL) - 1);
    sha256_update(&ctx, shared, sizeof(shared));
    sha256_update(&ctx, pub, X25519_KEY_SIZE);
    sha256_update(&ctx, owner_pub, X25519_KEY_SIZE);
    sha256_final(&ctx, key);
    wipe(shared, sizeof(shared));
    wipe(&ctx, sizeof(ctx));

    rc = aesgcm_open(key, answer + SR_OFF_IV, NULL, 0, answer + SR_OFF_CIPHERTEXT, released, slen,
                     answer + SR_OFF_TAG);
    wipe(key, sizeof(key));
    if (rc != 0)
        return result(HV_SECRET_GARBLED, "the secret does not authenticate");
    *secret = released;
    *len = slen;
    return result(HV_SECRET_OK, "the owner released a %u-byte secret", slen);
}

static int release(const uint8_t **secret, size_t *len)
{
    uint8_t priv[X25519_KEY_SIZE], pub[X25519_KEY_SIZE], report_data[SNP_REPORT_DATA_SIZE];
    uint8_t *block = shared_alloc(SR_PAGES);
    int rc;

    if (!block)
        return result(HV_SECRET_NO_PAGES, "no shared pages for the release");
    for (int i = 0; i < X25519_KEY_SIZE; i += 8) {
        uint64_t word;

        if (rdrand64(&word) != 0) {
            wipe(priv, sizeof(priv));
            return result(HV_SECRET_NO_RDRAND, "RDRAND gave no random number");
        }
        memcpy(priv + i, &word, sizeof(word));
        wipe(&word, sizeof(word));
    }
    x25519_base(pub, priv);

    /* The report binds the key: only this launch, as measured, could have asked with it. */
    memset(report_data, 0, sizeof(report_data));
    memcpy(report_data, pub, sizeof(pub));
    rc = snp_get_report(report_data, block + SR_OFF_REPORT);
    if (rc != 0) {
        wipe(priv, sizeof(priv));
        return result(HV_SECRET_NO_REPORT, "the attestation report request failed (%d)", rc);
    }
    put32(block + SR_OFF_MAGIC, SR_MAGIC);
    put32(block + SR_OFF_VERSION, SR_VERSION);
    put32(block + SR_OFF_STATUS, SR_STATUS_PENDING);

    /* The guest runs identity-mapped and the pool lies below 2 MiB: the address is the GPA. */
    outl(HV_PORT_SECRET_RELEASE, (uint32_t)(uintptr_t)block);

    /* Read the shared pages exactly once: checking one read and using another would let the
     * hypervisor change the answer in between. */
    memcpy(answer, block, sizeof(answer));
    rc = open_answer(priv, pub, secret, len);
    wipe(priv, sizeof(priv));
    return rc;
}

int hv_secret(const struct hv_boot_info *info, const uint8_t **secret, size_t *len)
{
    int snp = sev_info()->mode == SEV_MODE_SEV_SNP;

    *secret = NULL;
    *len = 0;
    if (snp) {
        if (info->secret_len > 0)
            return result(HV_SECRET_BOOT_INFO,
                          "the boot information claims a %u-byte launch secret under SEV-SNP",
                          info->secret_len);
        if (info->flags & HV_BOOT_FLAG_SECRET_RELEASE)
            return release(secret, len);
        return result(HV_SECRET_NONE, "no secret offered");
    }
    if (info->secret_len == 0)
        return result(HV_SECRET_NONE, "no secret offered");
    /* Both fields come from the unmeasured boot information page. Reading only the ABI's
     * secret page, at most one page of it, keeps a lying hypervisor from turning whatever the
     * guest does with the secret into an oracle on other private memory. */
    if (info->secret_gpa != HV_SECRET_GPA)
        return result(HV_SECRET_BAD_GPA, "secret_gpa 0x%lx is not the secret page 0x%lx",
                      info->secret_gpa, HV_SECRET_GPA);
    *secret = (const uint8_t *)HV_SECRET_GPA;
    *len = info->secret_len < HV_SECRET_MAX ? info->secret_len : HV_SECRET_MAX;
    return result(HV_SECRET_OK, "a %zu-byte launch secret", *len);
}
