/* compute: a compute-bound benchmark. A xorshift64 generator whose outputs are multiplied and
 * summed, entirely in registers: no memory access and no exit until the final print, so it runs
 * at the emulator's full speed whatever the encryption mode. About 13 instructions per
 * iteration, so COMPUTE_ITERATIONS makes roughly 1e9 guest instructions.
 *
 * Output: "compute: 0x<16 hex digits>", exit status 0. */
#include "hvguest.h"

#define COMPUTE_ITERATIONS 75000000UL
#define COMPUTE_SEED       0x0123456789abcdefUL
#define COMPUTE_MULTIPLIER 0x2545f4914f6cdd1dUL

int main(const struct hv_boot_info *bi)
{
    uint64_t x = COMPUTE_SEED;
    uint64_t acc = 0;

    (void)bi;
    for (uint64_t i = 0; i < COMPUTE_ITERATIONS; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc += x * COMPUTE_MULTIPLIER;
    }
    printf("compute: 0x%016lx\n", acc);
    return 0;
}
