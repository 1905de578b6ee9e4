/* attest: ask the PSP for an SEV-SNP attestation report over a nonce of the guest's own.
 *
 *   report_data: <128 hex digits>    SHA-256("hv-attest-nonce" || TSC) || SHA-256(that || TSC)
 *   report: <2368 hex digits>        the 1184-byte report, VCEK-signed
 *
 * The nonce comes from the guest's own time stamp counter, not from the (shared, host-written)
 * boot information: whoever checks the report with `hv owner verify-report --report-data` learns
 * that the report was made for this run. Exit 0; 1 when not under --sev-snp; 2 when the request
 * failed (the reason is printed).
 */
#include "hvguest.h"
#include "snp_guest.h"

static uint64_t rdtsc(void)
{
    uint32_t lo, hi;

    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

static void print_hex(const char *label, const uint8_t *p, size_t n)
{
    printf("%s: ", label);
    for (size_t i = 0; i < n; i++)
        printf("%02x", p[i]);
    printf("\n");
}

static uint8_t report[SNP_REPORT_SIZE];

int main(const struct hv_boot_info *bi)
{
    struct sha256_ctx ctx;
    uint8_t nonce[SNP_REPORT_DATA_SIZE];
    uint64_t tsc = rdtsc();

    (void)bi;
    if (sev_info()->mode != SEV_MODE_SEV_SNP) {
        printf("attest: not an SEV-SNP guest (mode %s)\n", sev_mode_name(sev_info()->mode));
        return 1;
    }
    sha256_init(&ctx);
    sha256_update(&ctx, "hv-attest-nonce", 15);
    sha256_update(&ctx, &tsc, sizeof(tsc));
    sha256_final(&ctx, nonce);
    tsc = rdtsc();
    sha256_init(&ctx);
    sha256_update(&ctx, nonce, 32);
    sha256_update(&ctx, &tsc, sizeof(tsc));
    sha256_final(&ctx, nonce + 32);

    int err = snp_get_report(nonce, report);

    if (err) {
        printf("attest: the guest request failed (%d)\n", err);
        return 2;
    }
    print_hex("report_data", nonce, sizeof(nonce));
    print_hex("report", report, sizeof(report));
    return 0;
}
