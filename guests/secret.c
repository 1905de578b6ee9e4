/* secret: the target of the snooping attacks.
 *
 * The secret is the launch secret the guest owner injected (secret_len bytes at GPA 0x9000),
 * under SEV-SNP the one the owner released to the attested guest (boot information flags bit 0,
 * lib/secret.h), or, when none was offered, the built-in DEFAULT_SECRET. The guest keeps copies
 * of it in three kinds of private memory (its stack, the heap, a static buffer in .bss), puts the
 * non-secret SHARED_MARKER in the first page it shares with the hypervisor, and prints one line:
 *
 *   secret-sha256: <SHA-256 of exactly the secret bytes, 64 lowercase hex digits>
 *
 * It then runs ROUNDS rounds, each re-hashing every copy and writing the round number to the
 * POST port (an exit), so an attacker gets many chances to act while the secret is live.
 *
 * Exit status: 0; 1 when the boot information is unusable (no heap, or a secret_gpa other
 * than 0x9000); 3 when a secret was offered but could not be obtained (one line
 * "secret: no secret: <reason>": refused, the answer dropped or garbled, no RDRAND, no report);
 * 10 when a private copy changed under the guest. */
#include "hvguest.h"
#include "secret.h"

#define DEFAULT_SECRET "HV-DEFAULT-SECRET-0123456789abcd" /* 32 bytes, no NUL */
#define SHARED_MARKER  "HV-SHARED-MARKER"                 /* 16 bytes, no NUL */
#define ROUNDS         64
#define EXIT_BAD_BOOT_INFO  1
#define EXIT_NO_SECRET      3
#define EXIT_SECRET_CHANGED 10

static uint8_t static_copy[HV_SECRET_MAX];

/* Re-hash one copy; report and fail when it no longer matches. */
static int check_copy(const char *where, const uint8_t *copy, size_t len,
                      const uint8_t expected[SHA256_DIGEST_SIZE], int round)
{
    uint8_t digest[SHA256_DIGEST_SIZE];

    sha256(copy, len, digest);
    if (memcmp(digest, expected, SHA256_DIGEST_SIZE) != 0) {
        printf("secret: the %s copy changed in round %d\n", where, round);
        return 0;
    }
    return 1;
}

int main(const struct hv_boot_info *bi)
{
    const uint8_t *src = (const uint8_t *)DEFAULT_SECRET;
    size_t len = sizeof(DEFAULT_SECRET) - 1;
    uint8_t stack_copy[HV_SECRET_MAX];
    struct hv_boot_info info = boot_info_read(bi);

    if (!boot_info_valid(&info)) {
        printf("secret: bad boot information page\n");
        return EXIT_BAD_BOOT_INFO;
    }
    /* The marker page first, so that it is the first page of the shared pool whatever else
     * the guest shares (a secret release takes pages of its own). */
    uint8_t *shared = shared_alloc(1);
    const uint8_t *got;
    size_t got_len;
    int rc = hv_secret(&info, &got, &got_len);

    if (rc == HV_SECRET_BAD_GPA) {
        printf("secret: %s\n", hv_secret_reason());
        return EXIT_BAD_BOOT_INFO;
    }
    if (rc < 0) {
        printf("secret: no secret: %s\n", hv_secret_reason());
        return EXIT_NO_SECRET;
    }
    if (rc == HV_SECRET_OK) {
        src = got;
        len = got_len;
    }

    uint8_t *heap_copy = malloc(len);

    if (!heap_copy || !shared) {
        printf("secret: out of %s memory\n", heap_copy ? "shared" : "heap");
        return EXIT_BAD_BOOT_INFO;
    }
    memcpy(stack_copy, src, len);
    memcpy(heap_copy, src, len);
    memcpy(static_copy, src, len);
    memcpy(shared, SHARED_MARKER, sizeof(SHARED_MARKER) - 1);

    uint8_t digest[SHA256_DIGEST_SIZE];
    char hex[2 * SHA256_DIGEST_SIZE + 1];

    sha256(src, len, digest);
    sha256_hex(digest, hex);
    printf("secret-sha256: %s\n", hex);

    for (int round = 0; round < ROUNDS; round++) {
        barrier(); /* the copies must really be re-read from memory every round */
        if (!check_copy("stack", stack_copy, len, digest, round) ||
            !check_copy("heap", heap_copy, len, digest, round) ||
            !check_copy("static", static_copy, len, digest, round))
            return EXIT_SECRET_CHANGED;
        outb(HV_PORT_POST, (uint8_t)round);
    }
    return 0;
}
