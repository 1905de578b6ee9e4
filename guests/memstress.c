/* memstress: rewrites a 16 MiB working set of private memory, taken from the heap above the
 * image, for PASSES passes. Each pass reads and rewrites every 8-byte word of every 4 KiB page,
 * then writes to the POST port (one exit per page), so private pages keep being touched between
 * exits. Each new word depends on the old one, so a page that lost its contents in any pass
 * changes the final checksum:
 *
 *   word[k] = word[k] * MEMSTRESS_MUL + ((k << 8) | pass) + MEMSTRESS_INC   (starting from 0)
 *   checksum = sum over k of (word[k] ^ (word[k] >> 31)) * (2k + 1), modulo 2^64
 *
 * (Both factors are invertible, so a change in any single word changes the checksum.)
 *
 * Output: "memstress: 0x<16 hex digits>", exit status 0; exit status 1 with an error line when
 * the VM has less than 32 MiB of memory (hv run --mem 32M or more). */
#include "hvguest.h"

#define WORKING_SET    (16UL << 20)
#define MIN_MEM_SIZE   (32UL << 20)
#define PASSES         4
#define WORDS_PER_PAGE (PAGE_SIZE / sizeof(uint64_t))
#define MEMSTRESS_MUL  0x5851f42d4c957f2dUL
#define MEMSTRESS_INC  0x14057b7ef767814fUL

int main(const struct hv_boot_info *bi)
{
    struct hv_boot_info info = boot_info_read(bi);
    uint64_t mem_size = boot_info_valid(&info) ? info.mem_size : 0;

    if (mem_size < MIN_MEM_SIZE) {
        printf("memstress: needs at least 32 MiB of memory, mem_size is 0x%lx\n", mem_size);
        return 1;
    }

    uint64_t *ws = heap_alloc(WORKING_SET, PAGE_SIZE);

    if (!ws) {
        printf("memstress: cannot allocate 16 MiB (0x%lx bytes free)\n", heap_free_bytes());
        return 1;
    }

    const uint64_t npages = WORKING_SET / PAGE_SIZE;

    for (uint64_t pass = 0; pass < PASSES; pass++) {
        for (uint64_t page = 0; page < npages; page++) {
            uint64_t *w = ws + page * WORDS_PER_PAGE;
            uint64_t k = page * WORDS_PER_PAGE;

            for (uint64_t j = 0; j < WORDS_PER_PAGE; j++, k++)
                w[j] = w[j] * MEMSTRESS_MUL + ((k << 8) | pass) + MEMSTRESS_INC;
            barrier(); /* the page is written before the exit */
            outb(HV_PORT_POST, (uint8_t)page);
        }
    }

    uint64_t sum = 0;

    for (uint64_t k = 0; k < npages * WORDS_PER_PAGE; k++)
        sum += (ws[k] ^ (ws[k] >> 31)) * (2 * k + 1);
    printf("memstress: 0x%016lx\n", sum);
    return 0;
}
