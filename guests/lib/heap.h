/* A bump allocator over the free memory between the end of the image and mem_size.
 *
 * Everything handed out is zeroed first: in an encrypted guest, private memory that was never
 * written reads as garbage (the decryption of whatever DRAM held). Nothing is ever freed. */
#ifndef HV_GUEST_HEAP_H
#define HV_GUEST_HEAP_H

#include <stddef.h>
#include <stdint.h>

/* Heap bounds: [start, limit). hv_lib_init calls this with the page after the image and
 * the memory size from the boot information (limit 0 when that page is not valid). */
void heap_init(uintptr_t start, uintptr_t limit);

/* size bytes aligned to align (a power of two), zeroed; NULL when the heap is exhausted. */
void *heap_alloc(size_t size, size_t align);

/* heap_alloc(size, 16). */
void *malloc(size_t size);

/* Bytes still free (ignoring alignment). */
size_t heap_free_bytes(void);

#endif
